"""NeMo's models load on Python 3.11.2 (Debian 12's), whose tarfile has no extraction filters.

NeMo 3.0 extracts ``.nemo`` files with ``filter="data"``, which Python added in 3.11.4; the real
install on Debian 12 failed every model load with a TypeError until ``nemo_fixes`` stepped in. Here
the older tarfile is imitated (no ``data_filter``, an ``extract`` without the keyword).
"""

import io
import tarfile

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def python_3_11_2_tarfile(monkeypatch):
    original = tarfile.TarFile.extract

    def extract(self, member, path="", set_attrs=True, *, numeric_owner=False, **kwargs):
        if kwargs:
            raise TypeError(f"TarFile.extract() got an unexpected keyword argument {next(iter(kwargs))!r}")
        return original(self, member, path, set_attrs, numeric_owner=numeric_owner)

    monkeypatch.delattr(tarfile, "data_filter")
    monkeypatch.setattr(tarfile.TarFile, "extract", extract)


def test_a_nemo_model_loads_without_tarfile_filters(python_3_11_2_tarfile, tiny_asr_model):
    from nemo.collections.asr.models import ASRModel
    from nemo.utils import tar_utils
    from nemotron_common import nemo_fixes

    with pytest.raises(TypeError, match="filter"):  # NeMo as shipped, on that Python
        tar_utils.safe_extract(tarfile.open(tiny_asr_model), "/tmp/unused-nemo-extract")
    nemo_fixes.apply()
    model = ASRModel.restore_from(str(tiny_asr_model), map_location="cpu")
    assert model.cfg.encoder is not None


def test_the_replacement_still_refuses_what_the_filter_would(python_3_11_2_tarfile, tmp_path):
    from nemo.utils import tar_utils
    from nemotron_common import nemo_fixes

    nemo_fixes.apply()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        fifo = tarfile.TarInfo("pipe")
        fifo.type = tarfile.FIFOTYPE
        tar.addfile(fifo)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar, pytest.raises(tar_utils.TarPathTraversalError, match="pipe"):
        tar_utils.safe_extract(tar, str(tmp_path))
