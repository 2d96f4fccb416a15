"""Progress events: one bar per layer while the view is merged, then one for writing the
output (file contents written so far, of the total), for both sinks, so a long write to
a slow disk does not look like a hang."""

from __future__ import annotations

from pathlib import Path

import pytest

from converter import convert
from converter.testing.imagegen import Dir, File, Hardlink, ImageSpec, Layer, write_docker_archive

SINKS = ("dir", "tar")


def _image(tmp_path: Path) -> tuple[Path, int]:
    """Enough files for the directory writer's chunks; a hard link (contents once) and a
    big file in a compressed layer (staged, then renamed into place)."""
    files = [File(f"d{i % 20}/f{i}", bytes([i % 251]) * (i % 700)) for i in range(1500)]
    lower = Layer([Dir(f"d{i}/") for i in range(20)] + files)
    upper = Layer([File("big", b"B" * (300 << 10)), Hardlink("big2", "big")], compression="gzip")
    src = tmp_path / "image.tar"
    write_docker_archive(src, ImageSpec(layers=[lower, upper]))
    return src, sum(len(f.data) for f in files) + (300 << 10)


@pytest.mark.parametrize("forks", [True, False], ids=["processes", "threads"])
@pytest.mark.parametrize("sink", SINKS)
def test_writing_reports_contents_written_up_to_the_total(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          sink: str, forks: bool) -> None:
    if not forks:  # ROOTFS_WRITERS=threads
        from converter import workers
        from converter.sinks import directory, tar

        for module in (workers, directory, tar):
            monkeypatch.setattr(module, "CAN_FORK", False)
    src, total = _image(tmp_path)
    events: list[tuple[str, dict]] = []
    convert(str(src), tmp_path / ("out" if sink == "dir" else "out.tar"), flatten=sink == "tar",
            progress=lambda kind, info: events.append((kind, dict(info))))
    kinds = [k for k, _ in events]
    assert kinds.count("layer-start") == 2 and kinds.count("layer-done") == 2
    assert kinds.count("write-start") == 1 and kinds.count("write-done") == 1
    assert kinds.index("write-start") > max(i for i, k in enumerate(kinds) if k == "layer-done")
    start = next(info for k, info in events if k == "write-start")
    assert start["bytes"] == total and start["entries"] >= 1522
    written = [info["bytes"] for k, info in events if k in ("write-progress", "write-done")]
    assert len(written) >= 3  # some progress before the end
    assert written == sorted(written) and written[-1] == total


def test_the_terminal_shows_a_writing_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    from converter import command

    monkeypatch.setattr(command.sys.stderr, "isatty", lambda: True)
    shown = command.Progress(enabled=True)
    try:
        shown.event("write-start", {"bytes": 1000, "entries": 3})
        shown.event("write-progress", {"bytes": 400})
        assert shown._progress is not None
        task = shown._progress.tasks[shown._tasks["write"]]
        assert (task.description, task.total, task.completed) == ("writing", 1000, 400)
        shown.event("write-done", {"bytes": 1000})
        assert task.completed == 1000
    finally:
        shown.stop()
