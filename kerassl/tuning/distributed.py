"""KerasTuner's distributed mode: one chief serving the oracle, workers running the trials.

KerasTuner switches to it when these environment variables are set (all three, or none):

- `KERASTUNER_TUNER_ID`: `chief` for the chief; a unique ID per worker (`tuner0`, `tuner1` …).
- `KERASTUNER_ORACLE_IP`: the address the chief listens on and the workers connect to.
- `KERASTUNER_ORACLE_PORT`: its port.

The chief runs no trial: it hands out hyperparameters, records the results in the search's
output folder, and, once every trial is over, writes the results and tests the best model.
Workers ask the chief for trials until it has none left; each trial's files go to
`<out>/tuner/trial_<id>/`, ids being unique across workers. The chief loads the best
trial's weights from there, so every process must see the same output folder.

`tuner_role` imports neither Keras nor KerasTuner: the CLI checks the variables first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import Any

from kerassl.errors import UserError

TUNER_ID, ORACLE_IP, ORACLE_PORT = (
    "KERASTUNER_TUNER_ID",
    "KERASTUNER_ORACLE_IP",
    "KERASTUNER_ORACLE_PORT",
)
ENV_VARS = (TUNER_ID, ORACLE_IP, ORACLE_PORT)


@dataclass(frozen=True)
class Role:
    """What this process does in a search.

    Attributes:
        kind: `alone` (no distributed mode), `chief` or `worker`.
        tuner_id: the `KERASTUNER_TUNER_ID` (`tuner0` alone, KerasTuner's default).
        address: `ip:port` of the chief's oracle (None alone).
    """

    kind: str
    tuner_id: str = "tuner0"
    address: str | None = None


def tuner_role(environ: Mapping[str, str] | None = None) -> Role:
    """The role the `KERASTUNER_*` variables give this process, as KerasTuner reads them
    (a tuner ID containing `chief` is the chief).

    Raises:
        UserError: only some of the variables are set, or a value is malformed.
    """
    environ = os.environ if environ is None else environ
    missing = [name for name in ENV_VARS if name not in environ]
    if len(missing) == len(ENV_VARS):
        return Role("alone")
    if missing:
        raise UserError(
            f"distributed tuning needs {', '.join(ENV_VARS)}; {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set (set all three, or none)"
        )
    tuner_id, ip, port = (environ[name].strip() for name in ENV_VARS)
    if not tuner_id:
        raise UserError(f"{TUNER_ID} must be chief or a worker ID such as tuner0; got ''")
    if not ip:
        raise UserError(f"{ORACLE_IP} must be the chief's address such as 10.0.0.1; got ''")
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        raise UserError(f"{ORACLE_PORT} must be a port number in 1-65535; got {port!r}")
    kind = "chief" if "chief" in tuner_id else "worker"
    return Role(kind, tuner_id, f"{ip}:{port}")


def requeue_unfinished(oracle: Any) -> None:
    """Makes the oracle's queue of trials to run again hold exactly the unfinished trials
    no tuner holds: running ones and failed ones waiting for a retry.

    A reloaded KerasTuner oracle queues the trials that were running for anyone to re-run.
    Some of them may be over: a process killed right after a trial ended saved it as over
    but still running, and, in distributed mode, a worker that outlived the chief may have
    ended one since. Those leave the queue, so that no finished trial runs twice. A trial
    saved as running that the oracle's state does not list (a process killed while
    creating it) joins the queue, so that a resumed search does not end with it unrun.
    """
    held = {trial.trial_id for trial in oracle.ongoing_trials.values()}
    queue = oracle._retry_queue  # KerasTuner's; `create_trial` hands out its last entry first
    waiting = [
        trial_id
        for trial_id in queue
        if oracle.trials[trial_id].status in ("RUNNING", "INVALID") and trial_id not in held
    ]
    running = [
        trial_id
        for trial_id, trial in oracle.trials.items()
        if trial.status == "RUNNING" and trial_id not in held
    ]
    queue[:] = dict.fromkeys(waiting + running)


def serve_oracle(
    oracle: Any,
    address: str,
    on_trial_end: Callable[[Any], None],
    poll_seconds: float = 1.0,
) -> None:
    """Serves `oracle` to the workers on `address` until the search is over.

    KerasTuner's `oracle_chief.start_server`, except that it returns within `poll_seconds`
    of the last worker leaving (instead of 20 s), refuses an address already in use (gRPC
    would share the port with a chief still running), and calls `on_trial_end(trial)` as
    each trial ends. A trial ends once: a second end is ignored, and only unfinished
    trials are handed out again (`requeue_unfinished`). The search is over once a worker
    was told to stop and no trial is running nor any worker still expected.

    Raises:
        UserError: the address cannot be bound.
    """
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    class Servicer(oracle_chief.OracleServicer):
        def CreateTrial(self, request, context):
            # Of the trials queued when the oracle was reloaded, workers that outlived the
            # previous chief may have ended some since.
            requeue_unfinished(self.oracle)
            return super().CreateTrial(request, context)

        def EndTrial(self, request, context):
            trial_id = request.trial.trial_id
            if self.oracle.get_trial(trial_id).status != "RUNNING":
                # Over already: a retried call, or the second run of a trial that was in
                # flight when the chief restarted.
                return protos.get_service().EndTrialResponse()
            response = super().EndTrial(request, context)
            on_trial_end(self.oracle.get_trial(trial_id))
            return response

    servicer = Servicer(oracle)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=1), options=[("grpc.so_reuseport", 0)]
    )
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(address)  # 0 on failure in older gRPC releases
    except RuntimeError:
        bound = 0
    if not bound:
        raise UserError(
            f"cannot serve the tuning oracle on {address}: the port is in use or the "
            f"address is not this machine's; check {ORACLE_IP} and {ORACLE_PORT}"
        )
    server.start()
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll_seconds)
    finally:
        server.stop(grace=None)


class PatientClient:
    """A worker's `OracleClient` that rides out a chief restart.

    KerasTuner's client waits for a chief that is not up yet, but fails a call the chief
    dies during. This proxy retries such a call (gRPC `UNAVAILABLE`) every `retry_seconds`
    for up to `patience_seconds`, until the chief is back. Retries are safe: the chief
    ignores a second end of a trial, and hands out again only trials that are not over.
    """

    def __init__(self, client: Any, patience_seconds: float = 3600.0, retry_seconds: float = 1.0):
        self._client = client
        self._patience = patience_seconds
        self._retry = retry_seconds

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            import grpc

            deadline = time.monotonic() + self._patience
            while True:
                try:
                    return attribute(*args, **kwargs)
                except grpc.RpcError as error:
                    lost = error.code() == grpc.StatusCode.UNAVAILABLE
                    if not lost or time.monotonic() > deadline:
                        raise
                time.sleep(self._retry)

        return call
