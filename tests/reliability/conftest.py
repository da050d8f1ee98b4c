"""The reliability suite shares the helpers one level up (the scripted runner, the in-process server)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
