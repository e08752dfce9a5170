"""`prepare` cleans up after itself: no temporary directories, no empty directories after a
failure, the incomplete.* of a killed run removed (and named) on rerun, one at a time."""

import os
import tempfile

import pytest
pytest.importorskip("tensorflow_datasets")

from rap_flax import locks  # noqa: E402
from rap_flax.data import builders, prepare  # noqa: E402
from tests.test_data_prepare import make_dogs_source  # noqa: E402


@pytest.fixture
def source(tmp_path):
  make_dogs_source(tmp_path / "source", "tars")
  return str(tmp_path / "source")


@pytest.fixture
def scratch(tmp_path, monkeypatch):
  """Where tempfile puts what has no directory of its own (/tmp otherwise)."""
  directory = tmp_path / "tmp"
  directory.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(directory))
  return directory


@pytest.fixture
def removals(monkeypatch):
  logged = []
  real = prepare.logging.info
  monkeypatch.setattr(prepare.logging, "info", lambda fmt, *args: (
      logged.append(fmt % args) if fmt.startswith("Removed") else real(fmt, *args)))
  return logged


def test_a_preparation_leaves_no_temporary_directories_and_a_rerun_removes_incomplete_ones(
    source, scratch, removals, tmp_path):
  data_dir = tmp_path / "tfds"
  builder, _ = prepare.prepare("stanford_dogs", source, str(data_dir))
  assert os.listdir(scratch) == []  # tfds's tmp*tfds went into prepare's own, removed
  assert sorted(os.listdir(data_dir)) == ["stanford_dogs"]  # no empty downloads/extracted
  assert sorted(os.listdir(data_dir / "stanford_dogs")) == [os.path.basename(builder.data_dir)]

  # What a preparation killed half-way leaves: tfds's directory before its final rename.
  left = data_dir / "stanford_dogs" / f"incomplete.A1B2C3_{os.path.basename(builder.data_dir)}"
  left.mkdir()
  (left / "stanford_dogs-train.tfrecord-00000-of-00001").write_bytes(bytes(1 << 20))
  prepare.prepare("stanford_dogs", source, str(data_dir))
  assert not left.exists()
  assert removals == [f"Removed {left} (1.0 MB), left by an interrupted preparation."]
  assert os.listdir(scratch) == []


def test_a_failed_preparation_leaves_no_empty_directories(source, scratch, tmp_path,
                                                          monkeypatch):
  def fail(self, dl_manager):
    raise RuntimeError("generation failed")

  monkeypatch.setattr(builders.StanfordDogsFromSource, "_split_generators", fail)
  existing, new = tmp_path / "existing", tmp_path / "new"
  (existing / "cifar10").mkdir(parents=True)
  for data_dir in (existing, new):
    with pytest.raises(RuntimeError, match="generation failed"):
      prepare.prepare("stanford_dogs", source, str(data_dir))
  assert os.listdir(existing) == ["cifar10"]  # downloads/, stanford_dogs/ and the lock gone
  assert not new.exists()
  assert os.listdir(scratch) == []


def test_a_second_preparation_of_the_same_dataset_is_refused(source, tmp_path):
  data_dir = tmp_path / "tfds"
  with locks.DirectoryLock(str(data_dir), ".stanford_dogs.prepare.lock", "{holder}"):
    with pytest.raises(locks.LockedError, match=f"stanford_dogs is being prepared into "
                       f"{data_dir} by another process .*pid {os.getpid()}"):
      prepare.prepare("stanford_dogs", source, str(data_dir))
