"""Paired A/B of the perturbation code against a git revision's, in one process.

    python benchmarks/ab_revision.py --base REV [--rounds 120] [--steps 10] [--jit false]

For changes worth about 1% of a step, which repeated runs of `step_time.py` cannot resolve on this
VM. It loads ``keras_pacgen/perturbation.py`` as it is at REV (``git show``) as a second module,
builds PerturbedAdam and PerturbedSGD on both versions of the mixin (the arguments of
`step_time.py`) next to plain Adam and SGD on the MNIST CNN at batch 128, and times all six as
`step_time.py` does: one step at a time in rotating order, `--steps` steps of each per round,
ratios paired by round (per-round medians) with a 95% bootstrap interval over the rounds. It
prints, for wall and process CPU time, each version's ratio to the plain optimizer and the ratio
of the working tree's version to REV's. Only perturbation.py comes from REV; the rest of
keras_pacgen (noise.py, the validation) is the working tree's, so REV must be compatible with it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras_pacgen as kp  # noqa: E402
from benchmarks import step_time  # noqa: E402


def source_at(revision: str) -> str:
    """The text of keras_pacgen/perturbation.py at `revision`."""
    return subprocess.run(
        ["git", "-C", ROOT, "show", f"{revision}:keras_pacgen/perturbation.py"],
        check=True, capture_output=True, text=True,
    ).stdout


def _module_at(revision: str):
    """keras_pacgen/perturbation.py as it is at `revision`, imported under another name."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source_at(revision))
    spec = importlib.util.spec_from_file_location("perturbation_base", f.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    os.unlink(f.name)
    return module


def _rebased(cls, module):
    """`cls` (PerturbedAdam, PerturbedSGD) with `module`'s PerturbationMixin in place of ours."""
    wrapped = [base for base in cls.__bases__ if base is not kp.PerturbationMixin]
    return type(f"{cls.__name__}_base", (module.PerturbationMixin, *wrapped),
                {"_second_moment_source": cls._second_moment_source})


def base_optimizers(module):
    """step_time.py's perturbed_adam and perturbed_sgd, built on `module`'s mixin. They are not
    instances of the installed `kp.PerturbationMixin`, so `kp.PerturbationCallback` does not drive
    their epoch counter: compare them over one epoch, or without callbacks as the timing does."""
    adam, sgd = _rebased(kp.PerturbedAdam, module), _rebased(kp.PerturbedSGD, module)
    return {
        "perturbed_adam_base": lambda: adam(**step_time.ADAM, **step_time.PERTURBATION),
        "perturbed_sgd_base": lambda: sgd(**step_time.SGD, **step_time.PERTURBATION),
    }


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--base", required=True, help="git revision to compare the working tree with")
parser.add_argument("--rounds", type=int, default=120)
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--jit", choices=("false", "true"), default="false")


def main(argv=None):
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.steps < 1:
        parser.error(f"--rounds must be >= 2 and --steps >= 1, got {args.rounds} and {args.steps}")
    warnings.filterwarnings("ignore")
    step_time.OPTIMIZERS.update(base_optimizers(_module_at(args.base)))
    keys = ["adam", "perturbed_adam", "perturbed_adam_base", "sgd", "perturbed_sgd", "perturbed_sgd_base"]
    jit = args.jit == "true"
    steppers = {k: step_time.stepper(*step_time.build("mnist_cnn", k, jit, 128)) for k in keys}
    times = step_time.time_rounds(steppers, args.rounds, args.steps)
    print(f"mnist_cnn, batch 128, jit_compile={jit}, {args.rounds} rounds x {args.steps} steps; "
          f"perturbed_* = working tree, perturbed_*_base = {args.base}")
    for family in ("adam", "sgd"):
        for a, b in ((f"perturbed_{family}", family), (f"perturbed_{family}_base", family),
                     (f"perturbed_{family}", f"perturbed_{family}_base")):
            cells = []
            for k, name in ((0, "wall"), (1, "cpu")):
                ratio, low, high = step_time.paired_column_ratio(times[a], times[b], k)
                cells.append(f"{name} {ratio:.3f} [{low:.3f}, {high:.3f}]")
            print(f"{a:22s} / {b:20s} " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    main()
