"""``softunlearn example`` and ``softunlearn correct``: the engine, in-process, no Redis."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
import traceback
from pathlib import Path
from typing import Any, get_args

from workers.cli.arguments import add_column_arguments, add_input_files, missing_columns, overlay_columns
from workers.cli.exit_codes import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, EXIT_TARGET_MISSED
from workers.cli.gates import METRICS, apply_gates, format_gates, gate_argument
from workers.cli.heap import imports_outside_the_collector
from workers.engine.config import CorrectionSpec, MethodName, Metric, Scheme, Solver, spec_from_dict

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERNAL", "EXIT_OK", "EXIT_TARGET_MISSED", "register", "spec_from_args"]

DEBUG_ENV = "SOFTUNLEARN_DEBUG"
"""Set to 1 to print the traceback of an internal error."""

CORRECT_EPILOG = f"""\
gates:
  --gate 'SPLIT.METRIC<=VALUE' (repeatable; operators <=, >=, <, >) checks one number of the
  report after the run, e.g. --gate 'eval.demographic_parity_difference<=0.05'
  --gate 'eval.accuracy_change>=-0.01'. METRIC is the value after the correction, or with a
  suffix _before, _change (after - before), _change_low / _change_high (bootstrap interval of
  the change). Results are recorded in report.json under "gates"; a gate on a number the
  report lacks (e.g. robust_accuracy with --no-robust-eval) fails.
{textwrap.fill("Metrics: " + ", ".join(METRICS) + ".", width=94, initial_indent="  ",
               subsequent_indent="  ")}

exit codes:
  {EXIT_OK}  succeeded: target met and every gate passed
  {EXIT_INTERNAL}  internal error (please report it; SOFTUNLEARN_DEBUG=1 prints the traceback)
  {EXIT_BAD_INPUT}  bad input: the message names what to change; nothing was written
  {EXIT_TARGET_MISSED}  succeeded (outputs written) but the target was missed or a gate failed
"""


def _add_example(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("example", help="build a ready-to-correct example from real data (UCI tables, "
                            "MNIST images)")
    parser.add_argument("name", choices=("adult", "bank", "colored-mnist"))
    parser.add_argument("--out", required=True, type=Path, help="directory to create")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace files in a non-empty --out")
    parser.set_defaults(handler=run_example)


def _add_correct(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("correct", help="run one correction job in-process",
                            description="Correct a trained classifier by soft-weighted unlearning.\n"
                            "Writes OUT/model.safetensors, OUT/report.json, OUT/report.html and "
                            "OUT/weights.parquet.",
                            epilog=CORRECT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("inputs")
    add_input_files(io, "Parquet/CSV/safetensors")
    add_column_arguments(io)
    io.add_argument("--out", required=True, type=Path, help="output directory")
    target = parser.add_argument_group("target")
    target.add_argument("--objective", choices=get_args(Metric),
                        help="the target (required unless --spec sets objective.metric)")
    target.add_argument("--reduction", type=float, help="fraction ρ of the audit target to remove")
    target.add_argument("--utility-tolerance", type=float, help="allowed predicted log-loss increase τ")
    target.add_argument("--privileged-group", help="orient the gap as this group minus the rest")
    target.add_argument("--attack", choices=("pgd", "fgsm", "reflect_linear"),
                        help="robustness target attack")
    target.add_argument("--attack-norm", choices=("linf", "l2"))
    target.add_argument("--attack-epsilon", type=float)
    target.add_argument("--attack-steps", type=int)
    how = parser.add_argument_group("weights and method")
    how.add_argument("--scheme", choices=get_args(Scheme))
    how.add_argument("--k-fraction", type=float, help="hard scheme: fraction of samples removed")
    how.add_argument("--lower", type=float, help="qp: lower bound of ε (>= -1)")
    how.add_argument("--upper", type=float, help="qp: upper bound of ε")
    how.add_argument("--method", choices=get_args(MethodName))
    how.add_argument("--hessian", choices=("original", "reweighted"))
    how.add_argument("--max-iterations", type=int, help="target-tracking iterations (1 = one shot)")
    how.add_argument("--l2-reg", type=float, help="λ of the head objective")
    how.add_argument("--damping", type=float, help="extra damping on the Hessian")
    how.add_argument("--scope", choices=("last_layer", "full"), help="parameters the influence covers")
    how.add_argument("--solver", choices=get_args(Solver), help="full scope: inverse-HVP solver")
    net = parser.add_argument_group("network methods")
    net.add_argument("--layers", type=int, help="last k Linear layers to retrain/fine-tune (0 = all)")
    net.add_argument("--epochs", type=int)
    net.add_argument("--learning-rate", type=float)
    net.add_argument("--batch-size", type=int)
    net.add_argument("--weight-decay", type=float)
    net.add_argument("--alpha", type=float, help="weight of the retained task loss (NegGrad+, bad teacher)")
    net.add_argument("--temperature", type=float, help="distillation temperature (scrub, bad teacher)")
    parser.add_argument("--spec", type=Path, help="JSON job spec; flags override its fields")
    parser.add_argument("--no-robust-eval", action="store_true", help="skip robust accuracy")
    parser.add_argument("--no-frontier", action="store_true", help="skip the report's trade-off frontier "
                        "(spec evaluation.frontier sets its grid)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--gate", action="append", default=[], type=gate_argument,
                        metavar="'SPLIT.METRIC<=VALUE'",
                        help="fail (exit 3) unless this holds on the report; repeatable (see below)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch and BLAS (small models on a busy "
                        "machine run fastest with 1)")
    parser.add_argument("--memory-budget", metavar="SIZE",
                        help="refuse (exit 2) a job estimated to need more, e.g. 8GiB (default "
                        "$SOFTUNLEARN_MEMORY_BUDGET, else the memory available)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(handler=run_correct)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``example`` and ``correct`` to ``sub``."""
    _add_example(sub)
    _add_correct(sub)


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    if value is None:
        return
    *parents, leaf = path.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


FLAG_FIELDS = {
    "objective": "objective.metric", "sensitive": "objective.sensitive_attribute",
    "reduction": "objective.reduction", "utility_tolerance": "objective.utility_tolerance",
    "privileged_group": "objective.privileged_group", "attack": "objective.attack.kind",
    "attack_norm": "objective.attack.norm", "attack_epsilon": "objective.attack.epsilon",
    "attack_steps": "objective.attack.steps", "scheme": "weighting.scheme",
    "k_fraction": "weighting.k_fraction", "lower": "weighting.lower", "upper": "weighting.upper",
    "method": "method.name", "hessian": "method.hessian", "max_iterations": "method.max_iterations",
    "l2_reg": "influence.l2_reg", "damping": "influence.damping", "seed": "seed",
    "scope": "influence.scope", "solver": "influence.solver", "layers": "method.layers",
    "epochs": "method.epochs", "learning_rate": "method.learning_rate", "batch_size": "method.batch_size",
    "weight_decay": "method.weight_decay", "alpha": "method.alpha", "temperature": "method.temperature",
}


def spec_from_args(args: argparse.Namespace) -> CorrectionSpec:
    """The job spec from ``--spec`` (if any) with every given flag laid over it."""
    tree: dict[str, Any] = json.loads(args.spec.read_text(encoding="utf-8")) if args.spec else {}
    for flag, path in FLAG_FIELDS.items():
        _set(tree, path, getattr(args, flag))
    if args.no_robust_eval:
        _set(tree, "evaluation.robustness", False)
    if args.no_frontier:
        _set(tree, "evaluation.frontier", {"reductions": [], "k_fractions": []})
    objective = tree.get("objective")
    if not isinstance(objective, dict) or "metric" not in objective:
        raise ValueError("no objective: pass --objective (demographic_parity, equal_opportunity, "
                         "equalized_odds or robustness) or set objective.metric in --spec")
    return spec_from_dict(tree)


def run_example(args: argparse.Namespace) -> int:
    """Build an example directory."""
    from workers.engine.errors import EngineError
    from workers.engine.examples.builder import build_example

    try:
        info = build_example(args.name, args.out, seed=args.seed, overwrite=args.overwrite,
                             progress=lambda message: print(message, file=sys.stderr))
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {args.out}: {info.n_train} train / {info.n_audit} audit / {info.n_eval} eval rows, "
          f"{info.in_features} features; baseline eval accuracy {info.eval_accuracy:.4f}")
    print(f"label {info.label!r}, sensitive {info.sensitive!r}")
    return 0


def _progress(quiet: bool) -> Any:
    start = time.perf_counter()

    def report(stage: str, fraction: float) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - start:6.1f}s] {fraction:4.0%} {stage}", file=sys.stderr)

    return report


def run_correct(args: argparse.Namespace) -> int:
    """Run the correction and write OUT/model.safetensors, report.json, report.html, weights.parquet.

    Returns ``EXIT_OK``, ``EXIT_TARGET_MISSED`` (target missed or a gate failed; outputs written),
    ``EXIT_BAD_INPUT`` or ``EXIT_INTERNAL`` (an unexpected exception: a bug).
    """
    from workers.engine.errors import EngineError

    try:
        return _correct(args)
    except (EngineError, ValueError, OSError, argparse.ArgumentTypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc(file=sys.stderr)
        print(f"internal error: {type(exc).__name__}: {exc} (please report this)", file=sys.stderr)
        return EXIT_INTERNAL


_INPUT_FLAGS = ("model", "arch", "train", "audit", "eval", "schema", "spec")


def _preflight(args: argparse.Namespace) -> None:
    """The checks that need no engine, before torch and the data libraries are imported (a
    second and a half of CPU): every named input is a file, the spec parses and names an
    objective, the columns name a label and a sensitive attribute.

    Raises:
        ValueError: what to change.
    """
    for flag in _INPUT_FLAGS:
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise ValueError(f"--{flag} {path} is not a file")
    spec_from_args(args)
    if args.schema is None:
        missing = missing_columns(overlay_columns({}, args))
        if missing:
            raise ValueError(missing)


def _correct(args: argparse.Namespace) -> int:
    _preflight(args)
    with imports_outside_the_collector(getattr(args, "own_process", False)):
        from workers.cli.inputs import schema_from_args
        from workers.engine.evaluation.report import format_summary
        from workers.engine.io.architecture import load_arch
        from workers.engine.io.memory_plan import default_memory_budget, parse_bytes
        from workers.engine.models.head_model import pick_device
        from workers.engine.pipeline import load_inputs, run_correction, train_embedding
        from workers.reporting.outputs import write_outputs

    if args.threads:
        from workers.threads import limit_threads

        limit_threads(max(1, args.threads))
    pick_device(args.device)
    schema = schema_from_args(args)
    args.sensitive = args.sensitive or schema.sensitive[0]
    spec = spec_from_args(args)
    sensitive = spec.objective.sensitive_attribute
    arch = load_arch(args.arch)
    budget = parse_bytes(args.memory_budget) if args.memory_budget else default_memory_budget()
    inputs = load_inputs(args.model, arch, (args.train, schema), (args.audit, schema),
                         (args.eval, schema) if args.eval else None, sensitive, budget,
                         train_embedding(spec, args.device))
    result = run_correction(inputs, spec, progress=_progress(args.quiet), device=args.device)
    gates_passed = apply_gates(result.report, args.gate)
    paths = write_outputs(result, args.out)
    print(format_summary(result.report))
    if args.gate:
        print(format_gates(result.report["gates"]))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return EXIT_OK if result.report["target_met"] and gates_passed else EXIT_TARGET_MISSED
