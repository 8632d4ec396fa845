"""qd-eval writes its report folder all or none: a full disk (a real write limit, RLIMIT_FSIZE), a failing
rename, fsync or link on any of its files leaves the report already there byte-identical, no temp file behind,
and one error line naming the file it hit. A report without plots takes an earlier report's plots away with it."""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval_synthetic import make_export
from qd import files as files_module
from qd.command import QDError
from qd.evaluate import evaluation
from qd.evaluate.evaluation import PLOTS, REPORT_FILES, evaluate, write_outputs

CATEGORIES = ["apple", "circle", "square", "star"]
REPO = Path(__file__).resolve().parents[1]
USER_FILE = "my notes.txt"  # not qd-eval's: never touched
WRITE_ORDER = [REPORT_FILES[key] for key in (*PLOTS, "report")]


@pytest.fixture(scope="module")
def export(shared_bitmaps, tmp_path_factory):
    return make_export(tmp_path_factory.mktemp("eval-atomic") / "lin", shared_bitmaps, CATEGORIES, 200)


@pytest.fixture(scope="module")
def old_report(export, shared_bitmaps, tmp_path_factory) -> Path:
    """A finished report of another evaluation (40 drawings a category), and a file of the user's beside it."""
    folder = tmp_path_factory.mktemp("old") / "report"
    evaluate(export, data=shared_bitmaps, ignore_unknown=True, max_per_category=40, out_dir=folder,
             measure_speed=False)
    (folder / USER_FILE).write_text("mine\n")
    assert sorted(p.name for p in folder.iterdir()) == sorted([*WRITE_ORDER, USER_FILE])
    return folder


@pytest.fixture(scope="module")
def new_result(export):
    """The evaluation whose report replaces the old one (not written yet), and its plots, drawn once."""
    result = evaluate(export, measure_speed=False, write_files=False)
    return result, evaluation._draw_plots(result)


def fresh_copy(old_report: Path, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    folder = where / "report"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(old_report, folder)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every entry, hidden ones (temp files) included."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def inject(mp: pytest.MonkeyPatch, stage: str, victim: str) -> None:
    """Make `stage` fail for the report file named `victim`, as the system would."""
    def is_temp_of(path) -> bool:
        return os.path.basename(path).startswith(f".{victim}.")

    if stage == "write":  # a buffered write on a full disk: part written, then ENOSPC naming no file
        real_open = open

        def full_disk(path, mode="r", *args, **kwargs):
            f = real_open(path, mode, *args, **kwargs)
            if "w" in mode and is_temp_of(path):
                f.write(b"\x89PNG half")
                f.close()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return f

        mp.setattr(evaluation, "open", full_disk, raising=False)
    elif stage == "fsync":
        real_fsync = files_module.fsync_file

        def failing_fsync(path):
            if is_temp_of(path):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real_fsync(path)

        mp.setattr(files_module, "fsync_file", failing_fsync)
    elif stage == "link":  # keeping the old file aside
        real_link = os.link

        def failing_link(src, dst, *args, **kwargs):
            if os.path.basename(src) == victim:
                raise OSError(errno.EMLINK, os.strerror(errno.EMLINK), src, None, dst)
            return real_link(src, dst, *args, **kwargs)

        mp.setattr(files_module.os, "link", failing_link)
    elif stage == "rename":
        real_replace = os.replace

        def failing_replace(src, dst, *args, **kwargs):
            if os.path.basename(dst) == victim and is_temp_of(src):
                raise OSError(errno.EIO, os.strerror(errno.EIO), src, None, dst)
            return real_replace(src, dst, *args, **kwargs)

        mp.setattr(files_module.os, "replace", failing_replace)
    elif stage == "unlink":  # an earlier report's plot, taken away by a report without plots
        real_unlink = os.unlink

        def failing_unlink(path, *args, **kwargs):
            if os.path.basename(path) == victim:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
            return real_unlink(path, *args, **kwargs)

        mp.setattr(files_module.os, "unlink", failing_unlink)
    else:
        raise AssertionError(stage)


REASONS = {"write": errno.ENOSPC, "fsync": errno.EIO, "link": errno.EMLINK, "rename": errno.EIO,
           "unlink": errno.EROFS}
# With plots every file is written; without, report.json is, and the old plots are taken away.
WITH_PLOTS = st.tuples(st.just(True), st.sampled_from(["write", "fsync", "link", "rename"]), st.sampled_from(WRITE_ORDER))
WITHOUT_PLOTS = st.one_of(
    st.tuples(st.just(False), st.sampled_from(["write", "fsync", "link", "rename"]), st.just("report.json")),
    st.tuples(st.just(False), st.sampled_from(["link", "unlink"]), st.sampled_from(WRITE_ORDER[:-1])))


@settings(max_examples=40, deadline=None)
@given(case=st.one_of(WITH_PLOTS, WITHOUT_PLOTS))
def test_a_failure_at_any_file_of_the_report_leaves_the_old_report_as_it_was(old_report, new_result, tmp_path_factory,
                                                                            case):
    plots, stage, victim = case
    result, pngs = new_result
    out = fresh_copy(old_report, tmp_path_factory.mktemp("case"))
    result.out_dir = out
    before = snapshot(out)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluation, "_draw_plots", lambda result: dict(pngs))
        inject(mp, stage, victim)
        with pytest.raises(QDError) as raised:
            write_outputs(result, plots=plots)
    assert str(raised.value) == (f"{out / victim}: {os.strerror(REASONS[stage])}; no report written (the report "
                                 f"files already in {out} are as they were)")
    assert snapshot(out) == before  # byte-identical, nothing added (no temp), nothing taken away


@pytest.mark.parametrize("plots", [True, False])
def test_a_new_report_replaces_the_whole_old_one_and_nothing_else(old_report, new_result, tmp_path, plots):
    result, _ = new_result
    out = fresh_copy(old_report, tmp_path)
    result.out_dir = out
    write_outputs(result, plots=plots)
    written = WRITE_ORDER if plots else ["report.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*written, USER_FILE])  # no old plot left beside it
    assert (out / USER_FILE).read_text() == "mine\n"
    for name in written:
        assert (out / name).read_bytes() != (old_report / name).read_bytes()


def run_qd_eval(args: list, limit: int | None = None) -> subprocess.CompletedProcess:
    """qd-eval in a fresh process; with `limit`, every file it writes may grow to `limit` bytes only
    (RLIMIT_FSIZE: writes past it fail with EFBIG, as writes on a full disk fail with ENOSPC)."""
    script = ("import sys, resource, signal; import matplotlib; matplotlib.use('Agg'); "
              "import matplotlib.font_manager; "  # its cache is read (or made) before the limit
              + (f"signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                 f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY)); " if limit else "")
              + "sys.argv = ['qd-eval'] + sys.argv[1:]; from qd.evaluate.cli import main; main()")
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def new_sizes(export, tmp_path_factory) -> dict[str, int]:
    """The sizes of the new report's files, written without a limit."""
    out = tmp_path_factory.mktemp("sizes") / "report"
    done = run_qd_eval(["--model", export, "--out", out, "--backend", "onnx", "--no-speed"])
    assert done.returncode == 0, done.stderr
    return {p.name: p.stat().st_size for p in out.iterdir()}


@pytest.mark.parametrize("limit,plots", [(20_000, True), (40_000, True), (4_000, False)])
def test_qd_eval_on_a_full_disk_is_one_line_naming_the_file_and_keeps_the_old_report(export, old_report, new_sizes,
                                                                                     tmp_path, limit, plots):
    written = WRITE_ORDER if plots else ["report.json"]
    victim = next(name for name in written if new_sizes[name] > limit)  # the first file the limit stops
    out = fresh_copy(old_report, tmp_path)
    before = snapshot(out)
    done = run_qd_eval(["--model", export, "--out", out, "--backend", "onnx", "--no-speed",
                        "--plots" if plots else "--no-plots"], limit)
    assert done.returncode == 1
    assert done.stderr == (f"error: {out / victim}: File too large; no report written (the report files already "
                           f"in {out} are as they were)\n")
    assert snapshot(out) == before


def test_an_os_error_that_names_no_file_says_so_instead_of_blaming_io():
    """Every write names its file (os_errors_name); should one slip through, the line does not make up a place."""
    from qd.command import describe_os_error

    assert describe_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) == (
        "No space left on device (in a file this error does not name; please report it)")
    assert describe_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/a/b.png")) == (
        "/a/b.png: No space left on device")
