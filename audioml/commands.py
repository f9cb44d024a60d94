"""``audioml``: every command with one example (``audioml --help``), and ``audioml <command>
...`` as another way to call ``audioml-<command> ...``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

#: command -> (module with ``main()``, what it does, one example)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("audioml.train", "train, validate and test a model (-m: a sweep), recorded in MLflow",
              "audioml-train data=donateacry model=cnn trainer.max_epochs=3"),
    "eval": ("audioml.evaluate", "test a trained model again, on its data or another dataset",
             "audioml-eval source=outputs/runs/<run>"),
    "predict": ("audioml.predict", "answers of a trained model for recordings",
                "audioml-predict source=outputs/runs/<run> inputs=[recordings/]"),
    "export": ("audioml.export", "a trained model as one ONNX / TorchScript file",
               "audioml-export source=outputs/runs/<run> format=onnx"),
    "compare": ("audioml.compare", "runs side by side, two runs paired, where a sweep stands",
                "audioml-compare --experiment donateacry"),
    "classical": ("audioml.classical.cli", "scikit-learn pipelines on handcrafted or deep features",
                  "audioml-classical experiment=emotify/handcrafted"),
    "data": ("audioml.data.cli", "download, verify, prepare and describe datasets",
             "audioml-data download ravdess"),
    "reproduce": ("audioml.reproduce.cli", "the studies' experiments under their protocol and a grouped one",
                  "audioml-reproduce ravdess --quick"),
    "probe": ("audioml.probe", "which encoder and layer for my data: frozen encoders x layers x probes, one table",
              "audioml-probe data=ravdess 'encoders=[efficientat_mn04]' layers=all 'probes=[linear,knn]'"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["audioml: deep learning on audio, every study a command (PyTorch Lightning, Hydra, MLflow)", "",
             "Commands (each also runs as audioml-<command>; <command> --help explains its own keys):"]
    for name, (_, what, example) in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {what}")
        lines.append(f"  {'':<{width}}    {example}")
    lines += ["", "Where things go: paths.output_dir (./outputs, or AUDIOML_OUTPUT_DIR); data under AUDIOML_DATA_DIR;",
              "the runs in MLflow: mlflow ui --backend-store-uri sqlite:///outputs/mlflow/mlflow.db"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``audioml [--help | help | <command> ...]``; returns the exit status (2: unknown command)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        if len(args) > 1 and args[1] in COMMANDS:  # audioml help train
            args = [args[1], "--help"]
        else:
            print(usage())
            return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"audioml: no command {name!r}; the commands are {', '.join(COMMANDS)} (audioml --help)",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"audioml-{name}", *rest]
    result = module.main()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
