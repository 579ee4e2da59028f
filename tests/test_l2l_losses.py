"""Each Latent-To-Latent loss against an independent torch computation.

The references are torch's own `l1_loss`, `mse_loss`, `sigmoid`, `clamp` and
`cosine_similarity` (the unofficial training uses `nn.L1Loss`, `nn.MSELoss`
and `torch.sigmoid`), with gradients by torch autograd; the composed legacy
and paper objectives are checked through a small mapper built in both
frameworks (third_party/l2l_mapper_torch.py), with linear stand-ins for the
generator, classifier and identity network.
"""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from l2m_jax import l2l_losses

ATOL = 1e-6


def _rand(seed, *shape, scale=1.0):
  return (np.random.default_rng(seed).standard_normal(shape) * scale
          ).astype(np.float32)


def _t(x, grad=False):
  return torch.from_numpy(np.array(x)).requires_grad_(grad)


def _check(jax_fn, torch_fn, *arrays, rtol=1e-5):
  """Value and gradient w.r.t. the first array, JAX vs torch."""
  val, grad = jax.value_and_grad(jax_fn)(*[jnp.asarray(a) for a in arrays])
  ts = [_t(a, i == 0) for i, a in enumerate(arrays)]
  tv = torch_fn(*ts)
  tv.backward()
  np.testing.assert_allclose(val, tv.item(), rtol=rtol, atol=ATOL)
  np.testing.assert_allclose(grad, ts[0].grad.numpy(), rtol=rtol, atol=ATOL)


def test_latent_terms_match_torch_l1_and_mse():
  w2, w = _rand(0, 3, 6, 8), _rand(1, 3, 6, 8)
  for fn in (l2l_losses.cycle_loss, l2l_losses.zero_edit_loss):
    _check(fn, F.l1_loss, w2, w)
  _check(l2l_losses.neighbourhood_loss, F.mse_loss, w2, w)


def test_legacy_attribute_loss_matches_torch():
  edit, target = _rand(2, 5, scale=2), _rand(3, 5, scale=2)
  _check(l2l_losses.legacy_attribute_loss,
         lambda e, t: F.mse_loss(torch.sigmoid(e), torch.sigmoid(t)),
         edit, target)


def test_paper_attribute_loss_matches_torch_with_weights():
  logits = _rand(4, 6, 5, scale=2)
  probs = 1 / (1 + np.exp(-_rand(5, 6, 5, scale=2)))
  delta = _rand(6, 6, 5) * (np.random.default_rng(7).random((6, 5)) < 0.5)
  delta = delta.astype(np.float32)

  def torch_loss(lg, p, d):
    target = torch.clamp(p + d, 0, 1)
    weight = torch.where(d != 0, torch.tensor(2.5), torch.tensor(0.5))
    return (weight * (torch.sigmoid(lg) - target) ** 2).mean()

  _check(lambda lg, p, d: l2l_losses.paper_attribute_loss(lg, p, d, 2.5, 0.5),
         torch_loss, logits, probs.astype(np.float32), delta)
  # Targets are clipped into [0, 1].
  np.testing.assert_allclose(
      l2l_losses.attribute_targets(jnp.asarray([0.9, 0.1]),
                                   jnp.asarray([0.5, -0.5])), [1.0, 0.0])


def test_face_identity_loss_matches_torch_cosine():
  e, t = _rand(8, 4, 16), _rand(9, 4, 16)
  _check(l2l_losses.face_identity_loss,
         lambda a, b: (1 - F.cosine_similarity(a, b.detach(), dim=-1)).mean(),
         e, t)
  # The target embedding is not differentiated.
  g = jax.grad(l2l_losses.face_identity_loss, argnums=1)(e, t)
  np.testing.assert_array_equal(g, 0)


# ---------------------------------------------------------------------------
# Composed objectives through a small mapper, against torch.
# ---------------------------------------------------------------------------

N_LATENT, DIM, A = 6, 8, 3


def _mapper_pair(cond_dim, seed=0):
  from third_party import l2l_mapper_torch  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import mapper as cm  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  tm = l2l_mapper_torch.LevelsMapper(dim=DIM, cond_dim=cond_dim,
                                     bounds=(2, 4)).double()
  if cond_dim:
    with torch.no_grad():  # non-zero conditioning and last layers
      for g in (tm.course_mapping, tm.medium_mapping, tm.fine_mapping):
        g.cond.weight.normal_(0, 100)
  sd = {k: v.float() for k, v in tm.state_dict().items()}
  preset = 'paper' if cond_dim else 'legacy'
  cfg = cm.make_config(preset, style_dim=DIM, n_latent=N_LATENT,
                       bounds=(2, 4), cond_dim=cond_dim)
  variables, _ = cm.convert_state_dict(sd, 'test', cfg)
  return tm, cm.build_model(cfg), variables['params']


def _standins(seed=10):
  rng = np.random.default_rng(seed)
  g = (rng.standard_normal((N_LATENT * DIM, 12)) * 0.3).astype(np.float32)
  c = (rng.standard_normal((12, A))).astype(np.float32)
  e = (rng.standard_normal((12, 5))).astype(np.float32)
  return g, c, e


def test_legacy_objective_and_mapper_gradient_match_torch():
  """0.5 cycle + 1 attribute + 0.5 zero-edit + 0.5 neighbourhood, k = 2."""
  tm, m, params = _mapper_pair(0)
  g, c, _ = _standins()
  w = _rand(11, 4, N_LATENT, DIM)
  d = _rand(12, DIM)
  d /= np.linalg.norm(d)
  k, j = 2.0, 1

  def jax_total(p):
    blend = lambda x: 0.7 * w + 0.3 * m.apply({'params': p}, x)
    cls = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ g) @ c
    w_a = w + k * d
    w_n = blend(w_a)
    return (0.5 * l2l_losses.cycle_loss(blend(w_n - k * d), w) +
            l2l_losses.legacy_attribute_loss(cls(w_n)[:, j], cls(w_a)[:, j]) +
            0.5 * l2l_losses.zero_edit_loss(blend(w + 0 * d), w) +
            0.5 * l2l_losses.neighbourhood_loss(w_n, w))

  val, grads = jax.value_and_grad(jax_total)(params)
  # torch, as the unofficial train.py writes it (float64 reference).
  tw, td = torch.from_numpy(w).double(), torch.from_numpy(d).double()
  tg, tc = torch.from_numpy(g).double(), torch.from_numpy(c).double()
  tcls = lambda x: torch.tanh(x.reshape(x.shape[0], -1) @ tg) @ tc
  w_a = tw + k * td
  w_n = 0.7 * tw + 0.3 * tm(w_a)
  w_nc = 0.7 * tw + 0.3 * tm(w_n - k * td)
  w_i = 0.7 * tw + 0.3 * tm(tw + 0 * td)
  total = (0.5 * F.l1_loss(w_nc, tw) +
           F.mse_loss(torch.sigmoid(tcls(w_n)[:, j]),
                      torch.sigmoid(tcls(w_a)[:, j]).detach()) +
           0.5 * F.l1_loss(w_i, tw) + 0.5 * F.mse_loss(w_n, tw))
  total.backward()
  np.testing.assert_allclose(val, total.item(), rtol=1e-5)
  tgrad = tm.course_mapping.mapping[0][0].weight.grad.numpy().T
  got = np.asarray(grads['course_mapping']['mapping_0']['weight'])
  np.testing.assert_allclose(got, tgrad, rtol=1e-3,
                             atol=1e-4 * np.abs(tgrad).max())


def test_paper_objective_and_mapper_gradient_match_torch():
  """attribute + face id + 0.5 neighbourhood + 0.5 zero-edit + 0.5 cycle."""
  tm, m, params = _mapper_pair(A)
  g, c, e = _standins()
  w = _rand(13, 4, N_LATENT, DIM)
  delta = (_rand(14, 4, A) * (np.arange(A) < 2)).astype(np.float32)

  def jax_total(p):
    edit = lambda x, dl: x + m.apply({'params': p}, x, dl)
    feat = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ g)
    w_e = edit(w, delta)
    probs = jax.lax.stop_gradient(jax.nn.sigmoid(feat(w) @ c))
    return (l2l_losses.paper_attribute_loss(feat(w_e) @ c, probs, delta) +
            l2l_losses.face_identity_loss(feat(w_e) @ e, feat(w) @ e) +
            0.5 * l2l_losses.neighbourhood_loss(w_e, w) +
            0.5 * l2l_losses.zero_edit_loss(edit(w, 0 * delta), w) +
            0.5 * l2l_losses.cycle_loss(edit(w_e, -delta), w))

  val, grads = jax.value_and_grad(jax_total)(params)
  tw, tdl = torch.from_numpy(w).double(), torch.from_numpy(delta).double()
  tg, tc, te = (torch.from_numpy(x).double() for x in (g, c, e))
  feat = lambda x: torch.tanh(x.reshape(x.shape[0], -1) @ tg)
  edit = lambda x, dl: x + tm(x, dl)
  w_e = edit(tw, tdl)
  probs = torch.sigmoid(feat(tw) @ tc).detach()
  total = (F.mse_loss(torch.sigmoid(feat(w_e) @ tc),
                      torch.clamp(probs + tdl, 0, 1)) +
           (1 - F.cosine_similarity(feat(w_e) @ te,
                                    (feat(tw) @ te).detach())).mean() +
           0.5 * F.mse_loss(w_e, tw) +
           0.5 * F.l1_loss(edit(tw, 0 * tdl), tw) +
           0.5 * F.l1_loss(edit(w_e, -tdl), tw))
  total.backward()
  np.testing.assert_allclose(val, total.item(), rtol=1e-5)
  for name, tparam in (('cond', tm.fine_mapping.cond.weight),
                       ('mapping_2', tm.fine_mapping.mapping[2][0].weight)):
    got = np.asarray(grads['fine_mapping'][name]['weight'])
    want = tparam.grad.numpy().T
    np.testing.assert_allclose(got, want, rtol=1e-3,
                               atol=1e-4 * np.abs(want).max())


def test_legacy_step_matches_the_benchmark_torch_reference():
  """One compiled legacy `train_step` vs the torch objective of the benchmark.

  Real network paths at a tiny size: a 16 px StyleGAN2 (32-d latents) and
  the random BranchedTiny, whose images are nearest-resized 16 -> 224 and
  normalised inside the classifier (once). Torch Adam and optax Adam with
  the same (linear, eps 1) settings: the loss and the updated mapper agree.
  """
  import functools  # pylint: disable=g-import-not-at-top
  from configs import l2l_legacy  # pylint: disable=g-import-not-at-top
  from l2m_jax import l2l_networks  # pylint: disable=g-import-not-at-top
  from l2m_jax import parallel  # pylint: disable=g-import-not-at-top
  from l2m_jax import train_l2l  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import branched_tiny as cbt  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import mapper as cm  # pylint: disable=g-import-not-at-top
  from l2m_jax.convert import stylegan2 as cs  # pylint: disable=g-import-not-at-top
  from l2m_jax.models import branched_tiny as bt  # pylint: disable=g-import-not-at-top
  from scripts import benchmark_train_l2l as bench  # pylint: disable=g-import-not-at-top
  from third_party import branched_tiny_torch as tbt  # pylint: disable=g-import-not-at-top
  from third_party import l2l_mapper_torch as tm  # pylint: disable=g-import-not-at-top
  from third_party import stylegan2_torch as ts  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  g = ts.Generator(16, style_dim=32, n_mlp=2, channel_base=16).eval()
  c = tbt.randomize(tbt.BranchedTiny(), 0).eval()
  for p in list(g.parameters()) + list(c.parameters()):
    p.requires_grad_(False)
  m = tm.LevelsMapper(dim=32, bounds=(2, 4))
  attr = bt.ATTRIBUTES.index('smiling')
  rng = np.random.default_rng(1)
  w = (rng.standard_normal((2, g.n_latent, 32)) * 0.5).astype(np.float32)
  d = rng.standard_normal(32).astype(np.float32)
  d /= np.linalg.norm(d)

  config = l2l_legacy.get_config()
  config.update(dict(data_source='latents', batch_size=2, adam_eps=1.0,
                     lr=1e-2, mapper_bounds=(2, 4)))
  g_vars, g_cfg, _ = cs.convert_state_dict(g.state_dict(), 't',
                                           latent_avg=torch.zeros(32))
  c_vars, _ = cbt.convert_state_dict(c.state_dict(), 't')
  generator = cs.build_model(g_cfg)
  m_cfg = l2l_networks.mapper_config(config, generator.n_latent, 32, 0)
  m_vars, _ = cm.convert_state_dict(m.state_dict(), 't', m_cfg)
  names = tuple(bt.ATTRIBUTES)
  nets = l2l_networks.Networks(
      generator=generator, mapper=cm.build_model(m_cfg),
      classifier=cbt.build_model(), classifier_kind='branched_tiny',
      classifier_names=names, cond_names=names, cond_perm=(),
      trained=(attr,), identity=None, identity_kind=None, mode='legacy')
  compiled = parallel.compile_step(
      functools.partial(train_l2l.train_step, nets=nets, config=config),
      parallel.make_mesh(1), 'shard_map', num_args=1, donate_state=False)
  params = jax.tree.map(jnp.asarray, m_vars['params'])
  state = train_l2l.create_train_state(config, nets, jax.random.key(0))
  state = state.replace(mapper=state.mapper.replace(
      params=params, opt_state=train_l2l.make_optimizer(config).init(params)))
  st, metrics = compiled(
      compiled.put_state(state),
      compiled.put_batch({'index': np.arange(2, dtype=np.int32), 'w': w}),
      compiled.put_args({'generator': g_vars, 'classifier': c_vars,
                         'direction': d}))
  new = parallel.unreplicate_to_host(compiled.get_state(st)).mapper.params

  opt = torch.optim.Adam(m.parameters(), lr=1e-2, eps=1.0)
  loss = bench.torch_legacy_loss(
      g, c, None, m, torch.from_numpy(w), torch.from_numpy(d)[None, None],
      attr, lambda_face_id=0.0)
  opt.zero_grad()
  loss.backward()
  opt.step()
  # The attribute term must not be vanishing, or the classifier path is
  # not tested.
  assert float(compiled.get_metrics(metrics)['attribute']) > 1e-3
  np.testing.assert_allclose(float(compiled.get_metrics(metrics)['loss']),
                             float(loss.detach()), rtol=1e-5)
  want, _ = cm.convert_state_dict(m.state_dict(), 't', m_cfg)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(want['params'])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0,
                               atol=1e-6 * max(1.0, float(np.abs(b).max())))
