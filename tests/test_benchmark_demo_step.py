"""scripts/benchmark_demo_step.py: usage errors, and a run at the test size."""

import importlib.util
import pathlib
import re

import pytest

from configs import demo as demo_config
from l2m_jax import demo

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_script():
  spec = importlib.util.spec_from_file_location(
      'benchmark_demo_step', ROOT / 'scripts' / 'benchmark_demo_step.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_missing_helper_networks_are_named(tmp_path, capsys):
  with pytest.raises(SystemExit) as exc:
    _load_script().main(['--workdir', str(tmp_path)])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert 'no helper networks' in err and str(tmp_path / 'priors') in err


def test_overrides_read_the_fields_type_and_name_bad_ones():
  script = _load_script()
  config = demo_config.get_config()
  assert script.apply_overrides(
      config, ['base_dim=24', 'lr=1e-3', 'w_hpf=0.5']) == {
          'base_dim': 24, 'lr': 1e-3, 'w_hpf': 0.5}
  assert (config.base_dim, config.lr, config.w_hpf) == (24, 1e-3, 0.5)
  assert isinstance(config.base_dim, int)
  for item, match in (('no_such=1', "no top-level field 'no_such'"),
                      ('base_dim=wide',
                       "'base_dim' expects type int, got 'wide'"),
                      ('demo=1', "'demo' is not a scalar field"),
                      ('check_files=maybe', "'check_files' expects type bool")):
    with pytest.raises(ValueError, match=re.escape(match)):
      script.apply_overrides(demo_config.get_config(), [item])


def test_malformed_override_is_a_usage_error(tmp_path, capsys):
  (tmp_path / 'priors' / 'landmarks').mkdir(parents=True)
  (tmp_path / 'priors' / 'preservation').mkdir()
  with pytest.raises(SystemExit) as exc:
    _load_script().main(['--workdir', str(tmp_path), '--set', 'base_dim'])
  assert exc.value.code == 2
  assert "expected FIELD=VALUE" in capsys.readouterr().err


@pytest.mark.slow  # the quick demo's helper networks, then ten compilations
def test_runs_at_the_quick_size(tmp_path, capsys):
  config = demo_config.get_config('quick')
  demo.generate_data(config, str(tmp_path))
  demo.train_landmarks(config, str(tmp_path))
  demo.train_preservation(config, str(tmp_path))
  capsys.readouterr()
  assert _load_script().main(['--workdir', str(tmp_path), '--quick',
                              '--steps', '1', '--repeats', '1']) == 0
  out = capsys.readouterr().out
  # The lower optimisation level of the initial state changes no weight.
  assert re.search(r'initial state: compile and run [\d.]+ s at the default '
                   r'XLA level, [\d.]+ s at level 1 .*identical weights: '
                   r'True', out), out
  assert re.search(r'whole step, global batch \d+ over \d+ devices: compile '
                   r'[\d.]+ s, [\d.]+ steps/s', out), out
  flops = {m.group(1).strip(): float(m.group(2)) for m in re.finditer(
      r'^  (.+?) +([\d.]+) GFLOP', out, re.M)}
  assert len(flops) == 9, out
  assert all(v > 0 for v in flops.values()), flops
  # R1 differentiates D twice: more work than the plain gradient; the
  # step holds the edit's forward and backward passes and more.
  assert flops['D gradient with R1'] > flops['D gradient without R1']
  assert flops['whole per-device step'] > flops['edit forward+backward'] > (
      flops['edit forward (E, G)'])
