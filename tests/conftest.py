"""Set up once for every test file (pytest imports this before any test module, so before torch):

* the offline data: TIKTOKEN_CACHE_DIR and HELLASWAG_DIR point at ../shared/data when the caller
  has not set them (CI's .ci/run sets both; the clone lives beside shared/);
* one torch thread per process: the suite runs on two pytest-xdist workers (pytest.ini) that start
  trainer subprocesses of their own, and on 2 cores two threads per process made each step up to
  3x slower (OpenMP threads spinning for a core the other process holds).
"""

import os
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

for var, folder in (("TIKTOKEN_CACHE_DIR", "tiktoken_cache"), ("HELLASWAG_DIR", "hellaswag")):
    if (SHARED_DATA / folder).is_dir():
        os.environ.setdefault(var, str(SHARED_DATA / folder))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by every subprocess too

# pytest-xdist (--dist loadfile, --no-loadscope-reorder in pytest.ini) hands whole test files to the
# two workers in collection order. Longest first (seconds on CI's 2 cores, roughly): left to sort by
# name or by test count, test_trainer.py (a third of the suite) started last and kept one worker
# busy for ~20 s after the other had finished.
LONGEST_FIRST = ("test_trainer.py", "test_fsdp.py", "test_live_metrics.py", "test_gpu_check.py",
                 "test_speedrun.py", "test_fineweb.py", "test_hellaswag.py", "test_readme.py",
                 "test_results.py", "test_compile.py", "test_timelines.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    # a stable sort: each file keeps its own order
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
