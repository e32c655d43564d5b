"""Shared fixtures. Each server fixture lives in its own module under tests/support/."""

import os

# `dioptra run` keeps one local Prefect server between runs (dioptra_runner.local_server).
# The suite's runs each get a Prefect server of their own instead, stopped with the run, so
# no server outlives the suite: tests/test_local_server.py opts in explicitly, with a fixture
# that stops what it started. Set before any test builds a child's environment from ours.
os.environ["DIOPTRA_LOCAL_SERVER"] = "off"
os.environ["DIOPTRA_SERVER_IDLE_SECONDS"] = "5"  # if a test turns it on and forgets to stop it

from support.cluster import *  # noqa: F403
from support.kubelet import *  # noqa: F403
from support.mlflow import *  # noqa: F403
from support.plugin_tree import *  # noqa: F403
from support.prefect import *  # noqa: F403
from support.s3 import *  # noqa: F403
