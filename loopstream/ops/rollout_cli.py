"""``loopstream-rollout``: try a pipeline version on part of the sessions, then promote or roll back.

RolloutPolicy commands rewrite the A/B policy file the tracker reloads (``--policy-file``; in a cluster,
the file mounted from the ConfigMap). A version enters the policy only once every Triton replica
serves it (``load`` first), so no session is ever assigned a version its replica lacks.
``status`` and ``compare`` ask the tracker (``--tracker``) what it has loaded and measured.
Every flag has an environment variable (LOOPSTREAM_<FLAG>; the tracker's are
LOOPSTREAM_TRACKER_URL and LOOPSTREAM_TRACKER_TOKEN). Where the pool restricts its admin APIs,
give the header with LOOPSTREAM_TRITON_ADMIN_HEADER_KEY / LOOPSTREAM_TRITON_ADMIN_HEADER_VALUE
(in Kubernetes both come from the chart's Secret; microscope clients never have them).

Example::

    loopstream-rollout --replicas 10.0.0.1:8001,10.0.0.2:8001 load 2
    loopstream-rollout set-weights 1=0.9 2=0.1 --shadow 2=0.05
    loopstream-rollout --tracker 10.0.0.5:50061 compare
    loopstream-rollout promote 2        # or: rollback 1
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import grpc
import pandas as pd
from tritonclient.utils import InferenceServerException

from loopstream.core.env_flags import EnvFlags
from loopstream.ops.pool import (
    PoolError,
    discover_replicas,
    load_everywhere,
    missing_everywhere,
    served_versions,
    static_replicas,
)
from loopstream.serving.admin import DEFAULT_KEY, AdminHeader
from loopstream.tracker.client import TrackerClient
from loopstream.tracker.rollout import (
    PolicyFile,
    RolloutPolicy,
    Shadow,
    promote,
    rollback,
    with_weights,
    write_policy,
)
from loopstream.tracker.statistics import ARM_STATISTICS
from loopstream.v1 import tracker_pb2 as pb

# shadow_f1 is shown, not differenced: only sessions off the candidate shadow, so it has no control value.
ENV_PREFIX = "LOOPSTREAM_"
COMPARED = ["loops_per_frame", "mean_major_nm", "latency_p50_s"]


def compare_arms(stats: pd.DataFrame, control: str) -> pd.DataFrame:
    """Per-arm statistics (one row per arm, columns ARM_STATISTICS) with differences vs ``control``.

    Adds ``<metric>_diff`` (arm minus control) and ``<metric>_rel_pct`` (relative to control).

    >>> stats = pd.DataFrame({"arm_version": ["1", "2"], "sessions": [9, 1], "frames": [900, 100],
    ...     "loops_per_frame": [20.0, 22.0], "mean_major_nm": [10.0, 9.0],
    ...     "latency_p50_s": [0.1, 0.1], "shadow_f1": [0.95, float("nan")], "shadow_frames": [45, 0]})
    >>> compare_arms(stats, "1").loc["2", ["loops_per_frame_diff", "mean_major_nm_rel_pct"]].tolist()
    [2.0, -10.0]
    """
    missing = sorted(set(ARM_STATISTICS) - set(stats.columns))
    if missing:
        raise ValueError(f"arm statistics lack columns {missing}")
    table = stats[ARM_STATISTICS].astype({"arm_version": str}).set_index("arm_version")
    if control not in table.index:
        raise ValueError(f"control arm {control!r} has no statistics (arms: {list(table.index)})")
    base = table.loc[control, COMPARED]
    for metric in COMPARED:
        table[f"{metric}_diff"] = table[metric] - base[metric]
        table[f"{metric}_rel_pct"] = 100 * table[f"{metric}_diff"] / base[metric]
    return table


def format_comparison(table: pd.DataFrame, control: str) -> str:
    """The comparison as a terminal table: each metric, then (arm minus control, relative) for other arms."""
    rows = {}
    for arm, row in table.iterrows():
        cells = {"sessions": f"{row['sessions']:.0f}", "frames": f"{row['frames']:.0f}"}
        for metric in COMPARED:
            cells[metric] = f"{row[metric]:.4g}"
            if arm != control:
                cells[metric] += f" ({row[f'{metric}_diff']:+.3g}, {row[f'{metric}_rel_pct']:+.1f} %)"
        cells["shadow_f1"] = f"{row['shadow_f1']:.3f} ({row['shadow_frames']:.0f} frames)"
        rows[f"{arm} (control)" if arm == control else arm] = cells
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("arm").to_string()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopstream-rollout", description=__doc__.splitlines()[0])
    flags = EnvFlags(parser, ENV_PREFIX)
    flags.add("--policy-file", type=Path, help="the A/B policy JSON the tracker reads")
    flags.add("--replicas", env="LOOPSTREAM_TRITON_REPLICAS", help="Triton gRPC host:port,...")
    flags.add(
        "--triton-service", help="Kubernetes headless Service of the Triton pool (instead of --replicas)"
    )
    flags.add("--namespace", default="default", help="its namespace")
    flags.add("--grpc-port-name", default="grpc", help="its gRPC port's name")
    flags.add(
        "--triton-admin-header-key", default=DEFAULT_KEY, help="name of the header the pool's admin APIs need"
    )
    flags.add(
        "--triton-admin-header-value",
        default="",
        help="its secret value (better from the environment); empty: send none",
    )
    flags.add("--tracker", env="LOOPSTREAM_TRACKER_URL", help="tracker host:port (status, compare)")
    flags.add("--token", env="LOOPSTREAM_TRACKER_TOKEN", help="the tracker's bearer token")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "status", help="the policy (in the file and loaded by the tracker), the versions each replica serves"
    )
    load = commands.add_parser("load", help="load a version on every replica, keeping the others")
    load.add_argument("version", type=int)
    weights = commands.add_parser("set-weights", help="shares of new sessions, e.g. 1=0.9 2=0.1")
    weights.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT")
    weights.add_argument(
        "--shadow", metavar="VERSION=FRACTION|off", help="shadow a candidate (default: keep)"
    )
    for name, text in (
        ("promote", "all new sessions on VERSION"),
        ("rollback", "all new sessions back on VERSION"),
    ):
        commands.add_parser(name, help=text).add_argument("version", type=int)
    compare = commands.add_parser("compare", help="the tracker's per-arm statistics against the control arm")
    compare.add_argument(
        "--since", type=float, default=0.0, help="only sessions opened after this Unix time (default: all)"
    )
    compare.add_argument(
        "--pipeline", help="pipeline whose arms to compare (default: the tracker's policy's)"
    )
    compare.add_argument("--control", help="control arm (default: the policy's largest share)")
    return parser


def _pairs(items: list[str]) -> dict[str, float]:
    pairs = {}
    for item in items:
        version, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not VERSION=NUMBER")
        pairs[version.strip()] = float(value)
    return pairs


def _replicas(args: argparse.Namespace) -> list[str]:
    if args.replicas:
        return static_replicas(args.replicas)
    if args.triton_service:
        return discover_replicas(args.triton_service, args.namespace, args.grpc_port_name)
    raise ValueError("give the Triton pool: --replicas host:port,... or --triton-service NAME")


def _admin(args: argparse.Namespace) -> AdminHeader | None:
    return AdminHeader.optional(args.triton_admin_header_key, args.triton_admin_header_value)


def _policy_file(args: argparse.Namespace) -> Path:
    if args.policy_file is None:
        raise ValueError("give --policy-file (or LOOPSTREAM_POLICY_FILE)")
    return args.policy_file


def _new_policy(args: argparse.Namespace, policy: RolloutPolicy) -> RolloutPolicy:
    if args.command == "promote":
        return promote(policy, str(args.version))
    if args.command == "rollback":
        return rollback(policy, str(args.version))
    new = with_weights(policy, _pairs(args.weights))
    if args.shadow == "off":
        return RolloutPolicy(new.pipeline, new.arms)
    if args.shadow:
        ((version, fraction),) = _pairs([args.shadow]).items()
        return RolloutPolicy(new.pipeline, new.arms, Shadow(version, fraction))
    return new


def _change_policy(args: argparse.Namespace) -> int:
    path = _policy_file(args)
    policy = PolicyFile(path).current()
    new = _new_policy(args, policy)
    replicas = _replicas(args)
    missing = missing_everywhere(replicas, new.pipeline, [int(v) for v in new.versions], _admin(args))
    if missing:
        reasons = "\n".join(f"  {replica}: {reason}" for replica, reason in sorted(missing.items()))
        print(
            f"refused: the new policy needs versions {new.versions} of {new.pipeline} READY on every "
            f"replica (load them first: loopstream-rollout load VERSION):\n{reasons}",
            file=sys.stderr,
        )
        return 1
    write_policy(path, new)
    print(f"{path}: {policy.to_dict()} -> {new.to_dict()} (new sessions only)")
    return 0


def _tracker(args: argparse.Namespace) -> TrackerClient:
    if not args.tracker:
        raise ValueError("give the tracker: --tracker host:port (or LOOPSTREAM_TRACKER_URL)")
    return TrackerClient(args.tracker, args.token)


def _loaded_policy(args: argparse.Namespace) -> tuple[RolloutPolicy | None, float]:
    """The policy the tracker has loaded (None when it runs without one), and when it loaded it."""
    client = _tracker(args)
    try:
        reply = client.GetPolicy(pb.PolicyRequest(), timeout=10)
    except grpc.RpcError as exc:
        raise ConnectionError(f"tracker at {args.tracker}: {exc.details()}") from exc
    finally:
        client.close()
    return (RolloutPolicy.from_json(reply.policy_json) if reply.policy_json else None), reply.loaded_at_unix_s


def _print_policy(policy: RolloutPolicy) -> None:
    print(f"pipeline {policy.pipeline}, control arm {policy.control}")
    for version, weight in policy.arms.items():
        print(f"  arm {version}: {100 * weight:.1f} % of new sessions")
    if policy.shadow:
        print(f"  shadow {policy.shadow.version}: {100 * policy.shadow.fraction:.1f} % of frames")


def _status(args: argparse.Namespace) -> int:
    if args.policy_file is None and not args.tracker:
        raise ValueError("give --policy-file, --tracker or both")
    policy = None
    if args.policy_file is not None:
        policy = PolicyFile(args.policy_file).current()
        print(f"policy file {args.policy_file}:")
        _print_policy(policy)
    if args.tracker:
        loaded, loaded_at = _loaded_policy(args)
        if loaded is None:
            print(f"tracker {args.tracker}: no A/B policy (every session on its default model)")
        else:
            when = datetime.datetime.fromtimestamp(loaded_at, datetime.timezone.utc).isoformat(
                timespec="seconds"
            )
            in_sync = (
                ""
                if policy is None
                else (" (as in the file)" if loaded == policy else " (NOT the file's yet)")
            )
            print(f"tracker {args.tracker}: loaded at {when}{in_sync}")
            _print_policy(loaded)
            policy = policy or loaded
    if policy is not None and (args.replicas or args.triton_service):
        for replica in _replicas(args):
            try:
                served = served_versions(replica, policy.pipeline, _admin(args))
                print(f"  replica {replica}: serves {served}")
            except InferenceServerException as exc:  # a status report lists a dead replica, and goes on
                print(f"  replica {replica}: unreachable ({exc.message()})")
    return 0


def _load(args: argparse.Namespace) -> int:
    policy = PolicyFile(_policy_file(args)).current()
    replicas = _replicas(args)
    load_everywhere(replicas, policy.pipeline, args.version, _admin(args))
    print(f"version {args.version} of {policy.pipeline} READY on {len(replicas)} replica(s): {replicas}")
    return 0


def arm_table(reply: pb.ArmStatisticsReply) -> pd.DataFrame:
    """GetArmStatistics as a DataFrame, one row per arm (columns ARM_STATISTICS)."""
    return pd.DataFrame(
        [{c: getattr(arm, c) for c in ARM_STATISTICS} for arm in reply.arms], columns=ARM_STATISTICS
    )


def _compare(args: argparse.Namespace) -> int:
    policy, _ = _loaded_policy(args)
    if policy is not None:
        pipeline, control = args.pipeline or policy.pipeline, args.control or policy.control
    elif args.pipeline is None or args.control is None:
        raise ValueError("the tracker has no A/B policy: give --pipeline and --control")
    else:
        pipeline, control = args.pipeline, args.control
    client = _tracker(args)
    try:
        reply = client.GetArmStatistics(
            pb.ArmStatisticsRequest(pipeline=pipeline, since_unix_s=args.since), timeout=60
        )
    except grpc.RpcError as exc:
        raise ConnectionError(f"tracker at {args.tracker}: {exc.details()}") from exc
    finally:
        client.close()
    print(format_comparison(compare_arms(arm_table(reply), control), control))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"status": _status, "load": _load, "compare": _compare}
    try:
        return handlers.get(args.command, _change_policy)(args)
    except (ValueError, OSError, PoolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
