"""The probe suite: every class of bad or unusual input, on every public entry point.

Each probe asserts a correct result (against a float64 NumPy formula written in
`probes.formulas`) or a TypeError/ValueError whose one-line message names the
argument; the CLI probes assert one line on stderr, ``ncgeom COMMAND: error:``,
and exit status 2, before any work starts. The classes and what each gets are
listed in docs/errors.md, "Input classes".
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from probes import (
    Probe,
    check_probe,
    cli,
    collectives,
    ids,
    inputs,
    keywords,
    metric_scales,
    mixed,
    nonfinite,
    plugins,
    scales,
)

with warnings.catch_warnings():  # building some inputs (sparse CSR tensors) warns
    warnings.simplefilter("ignore")
    LIBRARY = [
        *inputs.probes(),
        *mixed.probes(),
        *nonfinite.probes(),
        *scales.probes(),
        *metric_scales.probes(),
        *keywords.probes(),
        *collectives.probes(),
        *plugins.probes(),
    ]


@pytest.mark.parametrize("probe", LIBRARY, ids=ids(LIBRARY))
def test_library_probe(probe: Probe) -> None:
    check_probe(probe)


@pytest.mark.parametrize("probe", cli.PROBES, ids=[probe.id for probe in cli.PROBES])
def test_cli_probe(
    probe: cli.CliProbe,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = probe.args(tmp_path)
    if probe.timeout is not None:
        status, err = cli.run_in_subprocess(args, probe.timeout)
    else:
        status, err = cli.run_in_process(probe, args, monkeypatch, capsys)
    cli.check_outcome(probe, args, status, err)
