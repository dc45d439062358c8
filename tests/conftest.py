"""Shared test setup: built models go to a per-session folder, never into ./models."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def dapo_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("dapo_home")
    old = os.environ.get("DAPO_HOME")
    os.environ["DAPO_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("DAPO_HOME", None)
    else:
        os.environ["DAPO_HOME"] = old
