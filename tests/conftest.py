"""Shared pytest set-up: tests/ on sys.path so `from support.x import ...` works everywhere."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
