"""Package metadata read by importlib.metadata is not a stage dependency."""

from nbpipeline.pipeline.trace import ignored


def test_editable_install_metadata_is_not_a_dependency() -> None:
    # The example's train stage records library versions; with `pip install -e .` in the
    # project root that reads nbpipeline.egg-info/ and pyproject.toml.
    assert ignored("nbpipeline.egg-info/PKG-INFO", "train")
    assert ignored("pyproject.toml", "train")
    assert ignored("build/lib/x.dist-info/METADATA", "train")
    assert not ignored("data/train.parquet", "train")
