"""Whether XLA:CPU shares a 2-D and a batched matrix product between threads, and their time.

    python experiments/scale/batched_threads.py

On the 2-core machine of docs/performance.md (jax 0.10.2) the 2-D product of a ViT-Ti/16 MLP
layer at batch 8 runs on both threads, while attention's batched products (8 x 3 heads of
197 x 197 by 197 x 64) run on one: the reason one core idles through them in the train step.
Re-run it on a newer jaxlib to see whether that still holds.
"""

from __future__ import annotations

import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import profile_step  # the script beside this one: reading a jax.profiler trace


def helpers_and_time(fn, *args, calls: int = 20) -> tuple[float, float]:
  """Threads that joined `fn`'s kernel per call (besides the one running it), and median ms."""
  for _ in range(3):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(calls):  # timed without the profiler, which slows the shared kernels
    begin = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - begin)
  trace_dir = tempfile.mkdtemp(prefix="batched_threads_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(calls):
      jax.block_until_ready(fn(*args))
  events = profile_step.load_trace(trace_dir)
  running = {e["thread"] for e in profile_step.kernel_events(events)}
  # A thread pool worker marks each share of another thread's kernel with a StartRegion.
  joins = [e for e in events
           if e["name"] == "ThreadpoolListener::StartRegion" and e["thread"] not in running]
  return len(joins) / calls, sorted(times)[calls // 2] * 1e3


def main() -> None:
  rng = np.random.default_rng(0)

  def array(*shape: int) -> jax.Array:
    return jnp.asarray(rng.normal(size=shape).astype(np.float32))

  cases = [
      ("2-D 1576 x 192 @ 192 x 768", lambda a, b: a @ b, (array(1576, 192), array(192, 768)),
       1576 * 192 * 768),
      ("batched (8, 3) x 197 x 197 @ 197 x 64 (weights.v)",
       lambda w, v: jnp.einsum("...qk,...kd->...qd", w, v),
       (array(8, 3, 197, 197), array(8, 3, 197, 64)), 24 * 197 * 197 * 64),
      ("batched (8, 3) x 197 x 64 @ (197 x 64)^T (q.k)",
       lambda q, k: jnp.einsum("...qd,...kd->...qk", q, k),
       (array(8, 3, 197, 64), array(8, 3, 197, 64)), 24 * 197 * 197 * 64),
  ]
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
  for name, fn, args, macs in cases:
    helpers, ms = helpers_and_time(jax.jit(fn), *args)
    print(f"{name:52s} helper threads per call {helpers:3.1f}  {ms:6.3f} ms  "
          f"{2 * macs / ms / 1e6:6.1f} GFLOP/s")


if __name__ == "__main__":
  main()
