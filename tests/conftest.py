"""Test-wide set-up: the pynetdicom requestor race work-around (`tests.pynetdicom_rejections`)."""

from __future__ import annotations

from tests.pynetdicom_rejections import install

install()
