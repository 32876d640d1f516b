"""Suite-wide: one JAX compilation cache for the whole run, shared by the xdist workers and the
scripts the tests start as subprocesses.

Many tests build the same tiny training step, env step or fit (same shapes, same settings) in
different processes; with the persistent cache the second one loads the compiled program instead
of compiling it again. The cache is emptied at the start of every run, so a run's time is what a
fresh clone's is, and code changes never meet a stale entry (the cache is keyed by the program,
the JAX version and the flags anyway).
"""
import os
import shutil

# XLA's backend optimisation level 0: the suite spends most of its time compiling tiny programs that
# then run a few hundred steps, and skipping LLVM's optimisation passes cut the CPU time of the env
# and training tests by a fifth (measured on the 2-core machine: 74 -> 58 s, 87 -> 70 s). Set before
# JAX starts a backend; the workers and the scripts the tests start inherit it. What the tests assert
# is behaviour, not speed: benchmarks/ and the commands run at the default level.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""),
                                                 "--xla_backend_optimization_level=0"]))

import jax  # noqa: E402


def pytest_configure(config):
    path = os.path.join(str(config.rootpath), ".pytest_cache", "jax-compilation")
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist) starts it empty
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)
    # Environment variables reach the workers and the subprocesses; jax.config this process.
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.3"
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
