"""``audioml-probe``: which encoder for my data? Probes encoders x hidden layers x probes on one
dataset from the all-layer embedding cache and prints the table (``audioml.run.probing``)::

    audioml-probe data=ravdess 'encoders=[efficientat_mn04,"hf_encoder model.backbone.name=/models/w2v"]' \\
        layers=all 'probes=[linear,knn]' [metric=macro_f1] [any audioml-train override ...]

``encoders``: model presets, each optionally followed by its own overrides (space-separated, in
quotes); ``layers``: ``all`` | ``last`` | ``weighted`` | indices (a list mixes them); ``probes``:
``linear``, ``mlp``, ``knn``; ``metric``: the test metric of the table; ``keep_checkpoints``:
``best`` (the chosen layer's runs keep theirs; default) or ``all``. Every other ``key=value``
goes to every probe run (``evaluation=emobox``, ``data.root=...``, ``paths.output_dir=...``);
the runs log no MLflow model or checkpoint copy unless told (``logger.log_model=true``).
A mistake on the command line is one message and exit status 2. Guide: docs/guide/probing.md;
all commands: audioml --help.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from audioml.entry import MISTAKE_EXIT

#: Keys of the command itself; every other override goes to the probe runs.
_OWN_KEYS = ("data", "encoders", "layers", "probes", "metric", "keep_checkpoints")


def _listed(value) -> tuple[str, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return tuple(str(v) for v in values)


def parse_command_line(argv: Sequence[str]):
    """``ProbeTableRequest`` from ``key=value`` arguments (Hydra's override grammar: lists in
    brackets, quoted strings). Raises ``ProbeUsageError``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from audioml.run.probing import PROBES, EncoderChoice, ProbeTableRequest, ProbeUsageError

    try:
        parsed = OverridesParser.create().parse_overrides(list(argv))
    except HydraException as error:
        raise ProbeUsageError(str(error).splitlines()[0]) from None
    own = {o.key_or_group: o.value() for o in parsed if o.key_or_group in _OWN_KEYS}
    rest = tuple(text for text, o in zip(argv, parsed) if o.key_or_group not in _OWN_KEYS)
    if "data" not in own or "encoders" not in own:
        raise ProbeUsageError("give data=<preset> and encoders=[<model preset>, ...] (audioml-probe --help)")
    return ProbeTableRequest(data=str(own["data"]),
                             encoders=tuple(EncoderChoice.parse(e) for e in _listed(own["encoders"])),
                             layers=_listed(own.get("layers", "all")), probes=_listed(own.get("probes", PROBES)),
                             metric=str(own.get("metric", "macro_f1")), overrides=rest,
                             keep_checkpoints=str(own.get("keep_checkpoints", "best")))


def main(argv: Sequence[str] | None = None) -> int:
    """Console script; returns the exit status: 2 for a mistake on the command line or in the
    data (one line, ``audioml.entry``), 130 after Ctrl-C (rerunning continues)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else MISTAKE_EXIT
    from audioml.entry import INTERRUPTED_EXIT, is_user_mistake, report_mistake
    from audioml.logs import log_to_stderr, quiet_third_party
    from audioml.run.probing import format_table, run_probe_table

    log_to_stderr()
    logging.getLogger("audioml").setLevel(logging.INFO)
    logging.getLogger("lightning").setLevel(logging.WARNING)  # per-run device and checkpoint lines, dozens of runs
    quiet_third_party()
    try:
        result = run_probe_table(parse_command_line(argv))
    except KeyboardInterrupt:
        print("\naudioml-probe: stopped (Ctrl-C); rerun the same command to continue", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not is_user_mistake(error):
            raise
        return report_mistake("audioml-probe", error)
    print(format_table(result.table))
    print(f"table: {result.directory / 'probe_table.csv'}"
          + (f"; MLflow parent run {result.parent_run_id}" if result.parent_run_id else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
