"""SIGKILL during each file a run writes, then ``--resume``: the run ends with the uninterrupted run's files.

A forked child runs the training with the project's one writer (``toykit.runs._commit``, the rename step of
``atomic_path``) or the metrics writer patched to cut the file being written in half and SIGKILL itself at that
moment; the parent resumes the run in the same folder and compares every file byte for byte with a run that was never
killed (summary.json without its timings; env.json records the time and command, so only its presence is checked).
"""

import os
import signal
from pathlib import Path

import pytest
import torch

import toykit.runs
from llm.config import RESUME_FREE_FIELDS, TrainConfig
from llm.training import train
from toykit.runs import MetricsWriter, read_json

pytestmark = [pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
              pytest.mark.run_figure]  # a kill while probe_curves.png is written

TIMINGS = ("train_seconds", "probe_seconds", "probe_share")


def _cfg(out_dir, **kw):
    base = dict(loss="dpo", num_synthetic=12, held_out=2, num_probes=3, tiny_hidden=16, tiny_layers=1,
                tiny_vocab_size=270, batch_size=2, max_prompt_tokens=32, max_response_tokens=16, lr=3e-3,
                eval_every=4, checkpoint_every=2, progress=False, figure=False, out_dir=str(out_dir))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread in parent and child alike (a forked child must not reuse the parent's thread pool)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cut(path: Path) -> None:
    """Leave ``path`` half written, as a kill in the middle of writing it would."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        for p in files[len(files) // 2:]:
            p.unlink()
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


def _killed_at(name: str, nth: int) -> None:
    """Patch the writers so that the ``nth`` write of the file called ``name`` dies half way (in the child)."""
    seen = {"count": 0}

    def hit() -> bool:
        seen["count"] += 1
        return seen["count"] == nth

    if name == "metrics.jsonl":
        real_write = MetricsWriter.write

        def write(self, row):
            if hit():
                line = toykit.runs.json.dumps(toykit.runs.json_safe(row)) + "\n"
                self._fh.write(line[: len(line) // 2])
                self._fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            real_write(self, row)

        MetricsWriter.write = write
        return
    real_commit = toykit.runs._commit

    def commit(tmp: Path, path: Path) -> None:
        if path.name == name and hit():
            _cut(tmp)
            os.kill(os.getpid(), signal.SIGKILL)
        real_commit(tmp, path)

    toykit.runs._commit = commit


def _run_killed(cfg: TrainConfig, name: str, nth: int) -> None:
    pid = os.fork()
    if pid == 0:  # the child: train until the patched write kills it; exit 3 if it never does
        try:
            _killed_at(name, nth)
            train(cfg)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
        f"the run never wrote {name} (write {nth}); exit status {status}"


def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _assert_same_data(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            _assert_same_data(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_data(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where


def _assert_same_run(whole: Path, resumed: Path) -> None:
    a, b = _files(whole), _files(resumed)
    assert sorted(a) == sorted(b)  # no file missing, no temporary left behind
    for name in a:
        if name == "env.json":
            continue
        if name == "probe_curves.png":  # its title names the run's folder, which differs; written atomically too
            continue
        if name == "config.json":  # the run's own folder; resume is recorded when a kill lost the first config.json
            free = {"out_dir", *RESUME_FREE_FIELDS}
            assert {k: v for k, v in read_json(whole / name).items() if k not in free} == \
                   {k: v for k, v in read_json(resumed / name).items() if k not in free}
            continue
        if name.endswith(".pt"):  # compared as data: the pickle's layout may differ, its content must not
            _assert_same_data(torch.load(whole / name, weights_only=True),
                              torch.load(resumed / name, weights_only=True))
            continue
        if name == "summary.json":
            sa, sb = read_json(whole / name), read_json(resumed / name)
            assert {k: v for k, v in sa.items() if k not in TIMINGS} == \
                   {k: v for k, v in sb.items() if k not in TIMINGS}
            assert sb["status"] == "completed" and sb["final_probes"]
            continue
        assert a[name] == b[name], f"{name} differs from the uninterrupted run"


@pytest.fixture(scope="module")
def whole_runs(tmp_path_factory):
    """The uninterrupted runs each kill is compared with, by reference mode."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("whole")
    return {mode: train(_cfg(root / mode, **MODES[mode])).run_dir for mode in MODES}


MODES = {"precomputed": {}, "per_step": {"reference": "per_step"}, "figure": {"figure": True}}


KILLS = [  # (file being written, which write of it, reference mode)
    ("config.json", 1, "precomputed"),
    ("env.json", 1, "precomputed"),
    ("tokenizer", 1, "precomputed"),
    ("reference_logps.pt", 1, "precomputed"),
    ("reference_model.pt", 1, "per_step"),
    ("keys.json", 1, "precomputed"),
    ("step_0000002.npz", 1, "precomputed"),
    ("metrics.jsonl", 3, "precomputed"),  # the training row of step 3 (after the first checkpoint), cut half way
    ("checkpoint.pt", 2, "precomputed"),
    ("checkpoint.pt", 3, "per_step"),  # the end checkpoint
    ("model", 1, "precomputed"),
    ("summary.json", 1, "precomputed"),
    ("probe_curves.png", 1, "figure"),
]


@pytest.mark.parametrize("name, nth, mode", KILLS, ids=[f"{n}-{k}-{m}" for n, k, m in KILLS])
def test_a_kill_during_a_write_resumes_to_the_uninterrupted_run(tmp_path, whole_runs, name, nth, mode):
    run = tmp_path / "run"
    _run_killed(_cfg(run, **MODES[mode]), name, nth)
    result = train(_cfg(run, **MODES[mode], resume=True))
    assert result.status == "completed"
    _assert_same_run(whole_runs[mode], run)
