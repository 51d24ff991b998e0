"""The fault suite: real node processes under load, faults injected, checkers after each.

Profiles. `short` (the default, part of every test run and of CI) keeps the whole suite to a
few minutes; `long` (`pytest tests/faults --fault-profile=long`, or
PEERLEDGER_FAULT_PROFILE=long) runs every fault on both consensus engines, with 50+ crashes
and minutes of packet loss and flapping links. Every test here carries the marker `faults`
(`pytest -m faults` runs only them, `-m "not faults"` leaves them out).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.results import Results
from tests.netlab import NetLab

HERE = Path(__file__).resolve().parent
PROFILE_ENV = "PEERLEDGER_FAULT_PROFILE"


@dataclass(frozen=True)
class Profile:
    name: str
    crash_kills: int  # kill -9 across the nodes (during mining, sync and reorganisations)
    startup_rounds: int  # SIGTERMs spread over the start-up, from exec to the network running
    partition_s: float  # how long each partition holds
    loss_s: float  # how long each packet-loss rate holds on every link
    flap_s: float  # how long links go down and up
    flap_period_s: float
    pause_s: float  # SIGSTOP (longer than the peer timeout, the shipped 30 s: test_faults_links)
    skews_ms: tuple[int, ...]
    fuzz_frames: int
    consensus: dict[str, tuple[str, ...]]  # fault family -> engines it runs on
    # max_reorg_depth of the fault networks, per engine: deeper than any side can grow while a
    # fault lasts (blocks every 0.6 s (PoW) / 1 s (PoS)), or two sides that each outgrow it
    # never reconcile - by design (README, "Finality") - and the checkers would report it.
    finality: dict[str, int]

    def engines(self, family: str) -> tuple[str, ...]:
        return self.consensus[family]


SHORT = Profile(
    name="short",
    crash_kills=6,
    startup_rounds=12,
    partition_s=8.0,
    loss_s=12.0,
    flap_s=15.0,
    flap_period_s=3.0,
    pause_s=35.0,
    skews_ms=(30_000, -600_000),
    fuzz_frames=10_000,
    consensus={"crash": ("pow",), "partitions": ("pos",), "links": ("pow",), "disk": ("pow",),
               "hostile": ("pos",)},
    finality={"pow": 40, "pos": 30},
)
LONG = Profile(
    name="long",
    crash_kills=60,
    startup_rounds=40,
    partition_s=30.0,
    loss_s=120.0,
    flap_s=180.0,
    flap_period_s=4.0,
    pause_s=45.0,
    skews_ms=(30_000, -30_000, 600_000, -600_000),
    fuzz_frames=50_000,
    consensus={"crash": ("pow", "pos"), "partitions": ("pos", "pow"), "links": ("pow", "pos"),
               "disk": ("pow", "pos"), "hostile": ("pos", "pow")},
    finality={"pow": 400, "pos": 300},
)
PROFILES = {p.name: p for p in (SHORT, LONG)}

_results: Results | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fault-profile", choices=sorted(PROFILES), default=None,
                     help=f"fault suite profile (default: ${PROFILE_ENV} or 'short')")


def current_profile(config: pytest.Config) -> Profile:
    name = config.getoption("--fault-profile") or os.environ.get(PROFILE_ENV) or "short"
    if name not in PROFILES:
        raise pytest.UsageError(f"{PROFILE_ENV}={name!r}: expected one of {sorted(PROFILES)}")
    return PROFILES[name]


def _is_fault_item(item: pytest.Item) -> bool:
    return HERE in Path(str(item.fspath)).resolve().parents


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    global _results
    mine = [item for item in items if _is_fault_item(item)]
    for item in mine:
        item.add_marker(pytest.mark.faults)
    if mine:
        _results = _results or Results(current_profile(config).name)
        _results.tests_defined = len(mine)
        collected = {Path(str(item.fspath)).name for item in mine}
        _results.modules_missing = {p.name for p in HERE.glob("test_faults_*.py")} - collected


def pytest_collection_finish(session: pytest.Session) -> None:
    if _results is not None:
        _results.tests_selected = sum(1 for item in session.items if _is_fault_item(item))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`consensus` is parametrised by the profile: the engines that fault family runs on
    (the test module names its family in FAMILY)."""
    if "consensus" in metafunc.fixturenames and _is_fault_path(metafunc.definition.fspath):
        family = getattr(metafunc.module, "FAMILY")
        metafunc.parametrize("consensus", current_profile(metafunc.config).engines(family), scope="module")


def _is_fault_path(path: object) -> bool:
    return HERE in Path(str(path)).resolve().parents


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not _is_fault_item(item) or _results is None:
        return
    if report.when == "call":
        _results.tests_run += 1
    if report.failed:
        lines = str(call.excinfo.value).strip().splitlines() if call.excinfo else [report.outcome]
        message = " / ".join(line.strip() for line in lines[:3])  # the checker's headline and first findings
        for row in getattr(item, "fault_rows", []):
            if row.outcome != "pass" or report.when == "call":
                row.failed(message[:200])


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _results is None or not _results.rows:
        return
    base = None
    try:
        base = session.config._tmp_path_factory.getbasetemp()  # noqa: SLF001 - pytest's own temp root
    except (AttributeError, ValueError):
        pass
    path = _results.write(Path(base) if base else None)
    if path is not None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"fault matrix written to {path}")


@pytest.fixture(scope="session")
def profile(pytestconfig: pytest.Config) -> Profile:
    return current_profile(pytestconfig)


@pytest.fixture
def results(request: pytest.FixtureRequest) -> Results:
    """The session's matrix; rows made through `row` are attached to the test for failures."""
    assert _results is not None
    return _results


@pytest.fixture
def row(request: pytest.FixtureRequest, results: Results):  # noqa: ANN201
    """row(fault, consensus, parameters): a new matrix row owned by this test."""

    def make(fault: str, consensus: str, parameters: str):  # noqa: ANN202
        r = results.row(fault, consensus, parameters)
        rows = getattr(request.node, "fault_rows", [])
        rows.append(r)
        request.node.fault_rows = rows
        return r

    return make


def lab_unavailable() -> str | None:
    return NetLab.unavailable()


@pytest.fixture(scope="module")
def module_lab() -> Iterator[NetLab]:
    reason = NetLab.unavailable()
    if reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    lab = NetLab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])  # kept: the logs
