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
