"""Fuzzing of the archive's hand-written parsers (issue 9, deliverable 6).

One harness per parser in `targets/`; each takes one input (bytes) and either returns quietly
(the parser gave a result its oracle, pydicom or pynetdicom, agrees with, or it raised the error
type the parser documents) or raises `Defect` / lets any other exception escape. The same
harness runs three ways:

- coverage-guided by atheris (`./dev fuzz [SECONDS]`, i.e. `python -m tests.fuzz run`): one
  libFuzzer process per harness, at most two at a time, with a per-input time limit and an
  address-space limit; crashes go to a folder and a summary is printed;
- replayed over the committed corpus (`corpus/<harness>/`) by tests/unit/test_fuzz_corpus.py;
- as the body of the Hypothesis property tests in tests/unit/test_codec_properties.py.

This package imports nothing from pacsguard at import time, so that atheris can instrument the
parsers when a worker imports its harness.
"""
