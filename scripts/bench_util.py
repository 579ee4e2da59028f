"""Shared pieces of scripts/benchmark_*.py: FLOPs, MFU, memory, rows, JSON.

Every benchmark row is a dict with the same keys (see `row`), written as a
JSON list by `--json` and printed as one table by `scripts/bench_report.py`.

FLOPs: XLA's cost analysis of the compiled JAX program (`xla_flops`; for a
program partitioned over several devices it counts one device's share, so it
is multiplied by the device count). The torch side of a pair is charged the
same FLOPs (same work, same batch), so MFU and the images/s ratio agree;
torch's own `FlopCounterMode` count (convolutions and matrix products only)
is recorded beside it as a cross-check.

MFU = achieved FLOP/s / the peak of `peak_tflops` (a stated number per device
kind and dtype; `--peak-tflops` overrides it).

Needs only the standard library at import time; jax and torch are imported
by the functions that use them.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Callable

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Dense peak TFLOP/s by device kind and compute dtype. float32 on NVIDIA
# GPUs is charged at the TF32 tensor-core rate: JAX's default precision and
# torch's cuDNN convolutions both use TF32 for float32 operands there.
# H100/H200 SXM: datasheet 989 dense bf16, 495 TF32; the bf16 figure used
# is the ~790 TFLOP/s of dense bf16 matrix work that an H200 sustains
# (and the TF32 figure half of it).
_GPU_PEAKS = (
    ('H200', {'bfloat16': 790.0, 'float32': 395.0}),
    ('H100', {'bfloat16': 790.0, 'float32': 395.0}),
    ('A100', {'bfloat16': 312.0, 'float32': 156.0}),
)


def cpu_peak_tflops() -> tuple[float, str]:
  """Nominal float32 peak of this CPU: cores x GHz x FLOPs/cycle.

  FLOPs/cycle per core: 32 with AVX-512 or AVX2+FMA (two 256-bit FMA units
  assumed, as on recent x86-64 server cores), 8 otherwise.
  """
  ghz, flags = None, ''
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('cpu MHz') and ghz is None:
          ghz = float(line.split(':')[1]) / 1000
        elif line.startswith('flags') and not flags:
          flags = line
  except OSError:
    pass
  ghz = ghz or 2.0
  per_cycle = 32 if (' avx512f' in flags or
                     (' avx2' in flags and ' fma' in flags)) else 8
  cores = os.cpu_count() or 1
  peak = cores * ghz * per_cycle / 1000
  return peak, (f'{cores} cores x {ghz:.2f} GHz x {per_cycle} float32 '
                'FLOP/cycle (nominal)')


def peak_tflops(platform_name: str, device_kind: str, dtype: str,
                override: float | None = None) -> tuple[float, str]:
  """(peak TFLOP/s, where the number comes from) for MFU."""
  if override:
    return float(override), '--peak-tflops'
  if platform_name == 'cpu':
    return cpu_peak_tflops()
  for key, peaks in _GPU_PEAKS:
    if key.lower() in device_kind.lower():
      return peaks[dtype], f'{key} dense {dtype} (stated)'
  return float('nan'), f'unknown peak for {device_kind}'


def xla_flops(compiled: Any) -> float | None:
  """FLOPs of one call of a compiled JAX program (XLA cost analysis)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


def xla_memory_bytes(compiled: Any) -> int | None:
  """Device memory a compiled program needs: arguments + outputs + temps."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes -
             m.alias_size_in_bytes + m.temp_size_in_bytes)


def jax_peak_bytes() -> int | None:
  """Peak bytes in use on the first JAX device (None on CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def rss_peak_bytes() -> int:
  """Peak resident set size of this process."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def torch_flops(fn: Callable[[], Any]) -> float | None:
  """FLOPs of one call of fn by torch's FLOP formulas (FlopCounterMode's).

  A plain dispatch mode over torch.utils.flop_counter's registry:
  FlopCounterMode itself installs module hooks that break
  torch.autograd.grad (the R1 double backprop).
  """
  try:
    from torch.utils._python_dispatch import TorchDispatchMode  # pylint: disable=g-import-not-at-top
    from torch.utils.flop_counter import flop_registry  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None

  class Counter(TorchDispatchMode):

    def __init__(self):
      super().__init__()
      self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
      kwargs = kwargs or {}
      out = func(*args, **kwargs)
      formula = flop_registry.get(func._overloadpacket)  # pylint: disable=protected-access
      if formula is not None:
        self.total += formula(*args, **kwargs, out_val=out)
      return out

  counter = Counter()
  with counter:
    fn()
  return float(counter.total)


def best_of(fn: Callable[[], Any], repeats: int, warmup: bool = False
            ) -> float:
  """Fastest of `repeats` timed calls of fn (which must block until done).

  The minimum is the figure least disturbed by other jobs; `warmup` makes
  one untimed call first.
  """
  if warmup:
    fn()
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def timed(fn: Callable[[], Any], sync: Callable[[Any], Any], steps: int
          ) -> float:
  """Seconds per call of fn over `steps` calls (one sync at the end)."""
  t0 = time.perf_counter()
  out = None
  for _ in range(steps):
    out = fn()
  sync(out)
  return (time.perf_counter() - t0) / steps


def row(bench: str, framework: str, *, dtype: str, batch: int, size: int,
        step_s: float, compile_s: float | None, flops: float | None,
        peak: tuple[float, str], device: str, peak_bytes: int | None,
        peak_kind: str, images: int | None = None, **extra: Any
        ) -> dict[str, Any]:
  """One benchmark result with the derived rates (the JSON row)."""
  images = batch if images is None else images
  tflops = flops / step_s / 1e12 if flops else None
  return {'bench': bench, 'framework': framework, 'dtype': dtype,
          'batch': batch, 'size': size, 'step_s': step_s,
          'images_per_s': images / step_s, 'compile_s': compile_s,
          'flops_per_step': flops, 'tflops': tflops,
          'mfu': tflops / peak[0] if tflops and peak[0] == peak[0] else None,
          'peak_tflops': peak[0], 'peak_source': peak[1], 'device': device,
          'peak_bytes': peak_bytes, 'peak_kind': peak_kind, **extra}


def environment() -> dict[str, Any]:
  """Machine, load and versions (recorded with every JSON)."""
  env = {'host': platform.node(), 'machine': platform.machine(),
         'cpus': os.cpu_count(), 'python': platform.python_version(),
         'date': time.strftime('%Y-%m-%d %H:%M:%S %Z')}
  try:
    env['load_average'] = os.getloadavg()
  except OSError:
    pass
  for mod in ('jax', 'jaxlib', 'flax', 'torch'):
    m = sys.modules.get(mod)
    if m is not None:
      env[mod] = getattr(m, '__version__', '?')
  return env


def write_json(path: str | None, rows: list[dict[str, Any]]) -> None:
  """Writes (or extends) a JSON file {'environments', 'rows'}."""
  if not path:
    return
  env = environment()
  data = {'rows': [], 'environments': []}
  if os.path.exists(path):
    with open(path) as f:
      data = json.load(f)
  for r in rows:  # the load while each row was measured
    r.setdefault('load_average', env.get('load_average'))
  data['rows'].extend(rows)
  same = lambda e: {k: v for k, v in e.items()
                    if k not in ('date', 'load_average')}
  if not any(same(e) == same(env) for e in data['environments']):
    data['environments'].append(env)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(data, f, indent=1)
  os.replace(tmp, path)


def run_child(cmd: list[str], what: str) -> list[dict[str, Any]]:
  """Runs a benchmark subprocess; returns the rows of its RESULT line."""
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  if proc.returncode or not lines:
    print(proc.stdout[-3000:], proc.stderr[-6000:], file=sys.stderr)
    raise SystemExit(f'{what} failed (exit {proc.returncode})')
  return json.loads(lines[-1][len('RESULT '):])


def emit(rows: list[dict[str, Any]]) -> None:
  """What a child prints for run_child."""
  print('RESULT ' + json.dumps(rows), flush=True)


def pair_ratios(rows: list[dict[str, Any]]) -> list[tuple[dict, dict | None]]:
  """(JAX row, matching torch row or None) per configuration."""
  key = lambda r: (r['bench'], r['dtype'], r['batch'], r['size'])
  torch_rows = {key(r): r for r in rows if r['framework'] == 'torch'}
  return [(r, torch_rows.get(key(r))) for r in rows
          if r['framework'] == 'jax']


def format_table(rows: list[dict[str, Any]]) -> str:
  """One markdown table, JAX and torch side by side."""

  def f(v, fmt):
    return '-' if v is None or v != v else format(v, fmt)

  def mib(r):
    if r is None or not r.get('peak_bytes'):
      return '-'
    return f'{r["peak_bytes"] / 2**20:.0f} ({r["peak_kind"]})'

  out = ['| bench | size | batch | dtype | JAX img/s | torch img/s | JAX/torch '
         '| JAX step ms | JAX compile s | GFLOP/img (XLA) | torch GFLOP/img '
         '(counter) | JAX TFLOP/s | JAX MFU | torch MFU | JAX mem MiB (XLA) '
         '| JAX peak MiB | torch peak MiB |',
         '| ' + ' | '.join(['---'] * 17) + ' |']
  for j, t in pair_ratios(rows):
    per_img = lambda v, r: (v / r['images'] if v and r.get('images')
                            else (v / r['batch'] if v else None))
    out.append(
        f'| {j["bench"]} | {j["size"]} | {j["batch"]} | {j["dtype"]} | '
        f'{f(j["images_per_s"], ".3f")} | '
        f'{f(t and t["images_per_s"], ".3f")} | '
        f'{f(t and j["images_per_s"] / t["images_per_s"], ".2f")} | '
        f'{f(j["step_s"] * 1e3, ".1f")} | {f(j["compile_s"], ".1f")} | '
        f'{f(per_img(j["flops_per_step"], j) and per_img(j["flops_per_step"], j) / 1e9, ".4g")} | '
        f'{f(t and per_img(t.get("counter_flops"), t) and per_img(t.get("counter_flops"), t) / 1e9, ".4g")} | '
        f'{f(j["tflops"], ".3g")} | {f(j["mfu"] and 100 * j["mfu"], ".3g")}% | '
        f'{f(t and t["mfu"] and 100 * t["mfu"], ".3g")}% | '
        f'{f(j.get("xla_memory_bytes") and j["xla_memory_bytes"] / 2**20, ".0f")} | '
        f'{mib(j)} | {mib(t)} |')
  return '\n'.join(out)
