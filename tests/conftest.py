"""Shared fixtures. Each server fixture lives in its own module under tests/support/."""

from support.cluster import *  # noqa: F403
from support.kubelet import *  # noqa: F403
from support.plugin_tree import *  # noqa: F403
from support.prefect import *  # noqa: F403
from support.s3 import *  # noqa: F403
