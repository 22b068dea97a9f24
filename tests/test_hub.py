"""Publishing: the staged Hub folder works offline as `made-with-clay/Clay`, with and without clay_hf installed."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
import torch
from conftest import TINY_CKPT, small_config
from huggingface_hub import ModelCard, set_client_factory
from huggingface_hub.utils import _http
from safetensors.torch import save_file

from clay_hf import ClayConfig, ClayForMaskedImageModeling, ClayImageProcessor
from clay_hf.commands.publish import main as publish_main
from clay_hf.hub.publish import (
    STAGING_MARKER,
    StagingError,
    WeightsLicense,
    stage_repository,
    upload_repository,
    validate_model_card,
)
from clay_hf.models.clay.convert_clay_original_checkpoint import (
    CONVERSION_RECORD_NAME,
    V0_1_RELEASE_FILE,
    conversion_record,
)
from clay_hf.utils.outputs import OutputLock

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "made-with-clay/Clay"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained-looking model folder: weights, processor, training summary and evaluation results."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = ClayForMaskedImageModeling(small_config()).eval()
    model.save_pretrained(folder)
    ClayImageProcessor().save_pretrained(folder)
    (folder / "training_summary.json").write_text(json.dumps({
        "global_step": 300, "chips_seen": 2400, "epochs_completed": 3, "effective_batch_size": 8,
        "final_train_loss": 0.21, "final_validation_loss": 0.25, "mask_ratio": 0.75, "bad_chips_skipped": 0,
        "wall_time_seconds": 7200, "hyperparameters": {"learning_rate": 1e-4},
        "hardware": {"device": "NVIDIA H100", "device_type": "cuda", "num_processes": 4},
    }))  # fmt: skip
    (folder / "eval_results.json").write_text(json.dumps({
        "masked_mse": 0.31, "masked_mse_per_group": {"rgb": 0.2, "nir": 0.4, "dem": None}, "num_chips": 64,
        "masking": "random", "masking_seed": 0, "mask_ratio": 0.75, "split": "validation",
        "validation_fraction": 0.2, "dataset": "/data/chips",
    }))  # fmt: skip
    return folder, model


@pytest.fixture(scope="module")
def staged(source, tmp_path_factory):
    folder, _ = source
    staging = tmp_path_factory.mktemp("staging") / "repo"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "publish.py"), "--model_dir", str(folder), "--repo_id", REPO_ID,
         "--staging_dir", str(staging), "--dry_run"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "would upload model.safetensors" in run.stdout and f"model card: {staging / 'README.md'}" in run.stdout
    return staging


def offline_cache(staging: Path, cache: Path) -> Path:
    """Lay the staged folder out as the Hub cache holds a downloaded repository."""
    snapshot = cache / "models--made-with-clay--Clay" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for path in staging.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    refs = cache / "models--made-with-clay--Clay" / "refs"
    refs.mkdir()
    (refs / "main").write_text(COMMIT)
    return cache


def run_offline(code: str, cache: Path, modules: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_MODULES_CACHE": str(modules)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=modules.parent)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


PROGRAM = """
import json, sys, torch
{imports}
from transformers import AutoImageProcessor, AutoModel, AutoModelForMaskedImageModeling, AutoModelForPreTraining
kwargs = {kwargs}
model = AutoModel.from_pretrained("made-with-clay/Clay", **kwargs).eval()
mim = AutoModelForMaskedImageModeling.from_pretrained("made-with-clay/Clay", **kwargs).eval()
pre = AutoModelForPreTraining.from_pretrained("made-with-clay/Clay", **kwargs)
processor = AutoImageProcessor.from_pretrained("made-with-clay/Clay", **kwargs)
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 13, 32, 32, generator=g); t = torch.rand(2, 3, generator=g); ll = torch.rand(2, 2, generator=g)
noise = torch.rand(2, 96, generator=g)
with torch.no_grad():
    pooled = model(x, t, ll).pooler_output
    loss = mim(x, t, ll, noise=noise).loss
print(json.dumps({{
    "model": type(model).__module__ + "." + type(model).__name__,
    "mim": type(mim).__name__, "pre": type(pre).__name__, "processor": type(processor).__name__,
    "clay_hf_imported": "clay_hf" in sys.modules,
    "pooled": pooled.tolist(), "loss": float(loss),
}}))
"""


def expected_outputs(model):
    generator = torch.Generator().manual_seed(0)
    x, t, ll = (
        torch.randn(2, 13, 32, 32, generator=generator),
        torch.rand(2, 3, generator=generator),  # in the range of the v0 encodings
        torch.rand(2, 2, generator=generator),
    )
    noise = torch.rand(2, 96, generator=generator)
    with torch.no_grad():
        return model.clay(x, t, ll).pooler_output, model(x, t, ll, noise=noise).loss


def test_staged_folder_holds_weights_code_card_and_licence(staged):
    names = {path.name for path in staged.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "LICENSE.md",
            "configuration_clay.py", "modeling_clay.py", "image_processing_clay.py"} <= names  # fmt: skip
    config = json.loads((staged / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_clay.ClayModel"
    assert config["auto_map"]["AutoModelForPreTraining"] == "modeling_clay.ClayForMaskedImageModeling"
    processor = json.loads((staged / "preprocessor_config.json").read_text())
    assert processor["auto_map"]["AutoImageProcessor"] == "image_processing_clay.ClayImageProcessor"


@pytest.mark.parametrize("with_clay_hf", [True, False])
def test_hub_id_works_offline_with_and_without_clay_hf(staged, source, tmp_path, with_clay_hf):
    _, model = source
    cache = offline_cache(staged, tmp_path / "hub")
    imports = "import clay_hf" if with_clay_hf else ""
    kwargs = "{}" if with_clay_hf else "{'trust_remote_code': True}"
    result = run_offline(PROGRAM.format(imports=imports, kwargs=kwargs), cache, tmp_path / "modules")
    assert result["clay_hf_imported"] is with_clay_hf
    if with_clay_hf:
        assert result["model"] == "clay_hf.models.clay.modeling_clay.ClayModel"  # the installed code, no remote code
    else:
        assert result["model"].startswith("transformers_modules.") and result["model"].endswith(".ClayModel")
    assert (result["mim"], result["pre"], result["processor"]) == (
        "ClayForMaskedImageModeling",
        "ClayForMaskedImageModeling",
        "ClayImageProcessor",
    )
    pooled, loss = expected_outputs(model)
    torch.testing.assert_close(torch.tensor(result["pooled"]), pooled, rtol=1e-5, atol=1e-6)
    assert result["loss"] == pytest.approx(float(loss), rel=1e-5)


def test_model_card_parses_is_complete_and_reads_the_summaries(staged):
    card = ModelCard.load(staged / "README.md")
    data = card.data
    assert (data.license, data.license_name, data.license_link) == ("openrail", None, None)
    assert data.library_name == "transformers" and data.pipeline_tag == "image-feature-extraction"
    assert {
        "earth-observation",
        "remote-sensing",
        "sentinel-2",
        "sentinel-1",
        "masked-autoencoder",
        "geospatial",
    } <= set(data.tags)
    results = {result.metric_name: result.metric_value for result in data.eval_results}
    assert results == {"masked MSE": 0.31, "masked MSE (rgb)": 0.2, "masked MSE (nir)": 0.4}  # dem: not measured
    assert {result.dataset_split for result in data.eval_results} == {"validation"}
    text = card.text
    for section in ("## Intended uses", "## Prohibited uses", "## How to use", "## Input specification",
                    "## Training data and procedure", "## Evaluation", "## Limitations and biases",
                    "## Environmental impact", "## Citation", "## Licence"):  # fmt: skip
        assert section in text, section
    assert "300 optimizer steps" in text and "4 × NVIDIA H100" in text and "2.00 hours" in text
    # which chips and which masking the numbers come from; a group with no masked patch is said so, not left out
    assert "64 chips of the validation split of `chips`" in text and "random with a fixed seed (0)" in text
    assert "| dem | not measured (no masked patch) |" in text
    assert "python scripts/" not in text and "clay-embed --model_name_or_path made-with-clay/Clay" in text
    assert "| 12 | dem | 499.46 | 880.35 |" in text and 'AutoModel.from_pretrained("made-with-clay/Clay")' in text
    assert "{{" not in text and "[More Information Needed]" not in text
    validate_model_card(staged / "README.md")


def model_folder(folder: Path, config=None) -> Path:
    """A save_pretrained folder with its processor and nothing else: no record of how the weights were made."""
    ClayForMaskedImageModeling(config or small_config()).save_pretrained(folder)
    ClayImageProcessor().save_pretrained(folder)
    return folder


V0_FACTS = ("0.46", "A10G", "released Clay v0.1 weights were trained")


def test_untrained_weights_get_no_v0_facts(tmp_path):
    staged = stage_repository(model_folder(tmp_path / "fresh"), tmp_path / "staging", REPO_ID)
    text = (staged.folder / "README.md").read_text()
    assert not any(fact in text for fact in V0_FACTS), [fact for fact in V0_FACTS if fact in text]
    assert "no training record came with these weights" in text and "they may be untrained" in text


def test_trained_weights_get_their_own_summary_not_v0_facts(staged):
    text = (staged / "README.md").read_text()
    assert not any(fact in text for fact in V0_FACTS), [fact for fact in V0_FACTS if fact in text]
    assert "pretrained with clay_hf" in text and "masking: random, seed 0" not in text  # no masking recorded there
    assert "masking not recorded" in text


def test_converted_v0_1_architecture_gets_the_v0_facts(tmp_path):
    """A converted folder of the released architecture (weights stand in: the card reads only the config)."""
    folder = tmp_path / "converted"
    folder.mkdir()
    ClayConfig().save_pretrained(folder)
    ClayImageProcessor().save_pretrained(folder)
    save_file({"stand_in": torch.zeros(1)}, folder / "model.safetensors")  # a valid file: staging checks it
    record = conversion_record(TINY_CKPT, ClayConfig())
    (folder / CONVERSION_RECORD_NAME).write_text(json.dumps({**record, "source_checkpoint": V0_1_RELEASE_FILE}))
    staged = stage_repository(folder, tmp_path / "staging", REPO_ID)
    text = (staged.folder / "README.md").read_text()
    assert (
        f"converted from the original Clay checkpoint `{V0_1_RELEASE_FILE}` (sha256 {record['source_sha256'][:16]}"
        in text
    )
    assert "validation loss 0.46" in text and "4 NVIDIA A10G GPUs" in text
    assert CONVERSION_RECORD_NAME in staged.files


def test_a_conversion_record_of_another_architecture_gets_no_v0_facts(tmp_path):
    folder = model_folder(tmp_path / "converted")
    (folder / CONVERSION_RECORD_NAME).write_text(json.dumps(conversion_record(TINY_CKPT, small_config())))
    text = (stage_repository(folder, tmp_path / "staging", REPO_ID).folder / "README.md").read_text()
    assert "converted from the original Clay checkpoint `clay_v0_tiny.ckpt`" in text
    assert not any(fact in text for fact in V0_FACTS), [fact for fact in V0_FACTS if fact in text]


# --- the staging folder: never delete what the tool did not make ----------------------------------------------------


def publish(capsys, *args: str) -> tuple[int, str, str]:
    """`clay-publish --dry_run` in process: (exit status, stdout, stderr)."""
    capsys.readouterr()  # drop what came before (progress bars of save_pretrained)
    status = publish_main(["--repo_id", REPO_ID, "--dry_run", *args])
    out, err = capsys.readouterr()
    return status, out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_staging_into_the_model_folder_is_refused_and_the_model_untouched(tmp_path, capsys):
    folder = model_folder(tmp_path / "model")
    before = snapshot(folder)
    status, _, err = publish(capsys, "--model_dir", str(folder), "--staging_dir", str(folder))
    assert status == 1  # no exception: one line, no traceback
    assert err.strip().splitlines() == [
        f"error: --staging_dir {folder} is the model folder {folder}: staging would overwrite the model. "
        "Choose a separate, new or empty folder (or leave --staging_dir out for a temporary one)."
    ]
    assert snapshot(folder) == before


@pytest.mark.parametrize("where", ["parent", "inside"])
def test_staging_around_or_inside_the_model_folder_is_refused(tmp_path, where):
    folder = model_folder(tmp_path / "runs" / "model")
    before = snapshot(tmp_path)
    staging = tmp_path / "runs" if where == "parent" else folder / "hub"
    with pytest.raises(StagingError, match="contains the model folder" if where == "parent" else "inside the model"):
        stage_repository(folder, staging, REPO_ID)
    assert snapshot(tmp_path) == before


def test_staging_into_a_working_folder_with_other_files_is_refused(tmp_path, capsys, monkeypatch):
    folder = model_folder(tmp_path / "model")
    work = tmp_path / "work"
    (work / "notes").mkdir(parents=True)
    (work / "notes" / "thesis.tex").write_text("years of work")
    (work / "data.csv").write_text("a,b")
    before = snapshot(work)
    monkeypatch.chdir(work)
    status, _, err = publish(capsys, "--model_dir", str(folder), "--staging_dir", ".")
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert (
        "error: --staging_dir . is not empty and was not made by this tool: refusing to delete its contents "
        "(data.csv, notes)" in err
    )
    assert snapshot(work) == before


def test_a_staging_folder_of_an_earlier_run_is_reused_and_says_so(tmp_path, capsys):
    folder = model_folder(tmp_path / "model")
    staging = tmp_path / "staging"
    first = stage_repository(folder, staging, REPO_ID)
    assert not first.reused and (staging / STAGING_MARKER).is_file() and STAGING_MARKER not in first.files
    (staging / "stale.txt").write_text("from an older staging")
    status, out, err = publish(capsys, "--model_dir", str(folder), "--staging_dir", str(staging))
    assert status == 0, err
    assert f"reused {staging}: a staging folder of an earlier run" in out
    assert not (staging / "stale.txt").exists() and (staging / "README.md").is_file()


def test_an_empty_or_new_staging_folder_is_used(tmp_path):
    folder = model_folder(tmp_path / "model")
    (tmp_path / "empty").mkdir()
    for staging in (tmp_path / "empty", tmp_path / "new" / "repo"):
        staged = stage_repository(folder, staging, REPO_ID)
        assert not staged.reused and "README.md" in staged.files


def test_a_second_staging_run_into_one_folder_is_refused_naming_the_holder(tmp_path, capsys):
    folder = model_folder(tmp_path / "model")
    staging = tmp_path / "staging"
    with OutputLock(staging) as first:  # the first staging run: this live process holds the folder
        status, _, err = publish(capsys, "--model_dir", str(folder), "--staging_dir", str(staging))
        holder = first.holder()
    assert status == 1 and err.strip().splitlines()[-1].startswith(
        f"error: {staging} is being written by another run (pid {holder['pid']} on "
    )
    assert not staging.exists()


def test_validation_refuses_a_card_with_placeholders_or_a_wrong_licence(staged, tmp_path):
    text = (staged / "README.md").read_text()
    broken = tmp_path / "README.md"
    broken.write_text(
        text.replace("license: openrail", "license: mit").replace("## Citation", "## Citation\n\n{{ x }}")
    )
    with pytest.raises(StagingError, match=r"license must be \{'license': 'openrail'\}.*unfilled placeholder"):
        validate_model_card(broken, license=WeightsLicense())


def test_staging_names_what_a_model_folder_lacks(tmp_path):
    ClayForMaskedImageModeling(small_config()).save_pretrained(tmp_path / "bare")
    with pytest.raises(StagingError, match=r"missing preprocessor_config\.json"):
        stage_repository(tmp_path / "bare", tmp_path / "staging", REPO_ID)


class FakeHub:
    """The Hub's HTTP API, answered in process: records what goes where."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.committed: dict[str, bytes] = {}
        self.created: dict | None = None
        self.validated: dict | None = None

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        self.requests.append((request.method, path))
        if path == "/api/repos/create":
            self.created = json.loads(request.content)
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{REPO_ID}", "name": REPO_ID})
        if path == "/api/validate-yaml":  # the Hub validates the card's metadata before a commit
            self.validated = json.loads(request.content)
            return httpx2.Response(200, json={})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})  # fmt: skip
        if "/commit/" in path:
            for line in request.content.decode().splitlines():
                entry = json.loads(line)
                if entry["key"] == "file":
                    self.committed[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
            return httpx2.Response(
                200, json={"commitUrl": f"https://huggingface.co/{REPO_ID}/commit/{COMMIT}", "commitOid": COMMIT}
            )
        return httpx2.Response(404, json={"error": f"unexpected {request.method} {path}"})


def test_upload_sends_every_staged_file_to_the_repo(staged, monkeypatch):
    hub = FakeHub()
    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub)))
    try:
        from clay_hf.hub.publish import StagedRepository

        files = sorted(path.name for path in staged.iterdir() if path.name != STAGING_MARKER)
        assert (staged / STAGING_MARKER).is_file()  # staged, but never uploaded
        url = upload_repository(StagedRepository(staged, REPO_ID, files), private=True, token="hf_fake")
    finally:
        set_client_factory(_http.default_client_factory)
    assert (
        hub.created["name"] == "Clay"
        and hub.created["organization"] == "made-with-clay"
        and hub.created["visibility"] == "private"
    )
    assert sorted(hub.committed) == files
    for name in files:
        assert hub.committed[name] == (staged / name).read_bytes(), name
    assert COMMIT in url
    assert "license: openrail" in hub.validated["content"]
    assert all(host_path.startswith("/api/") for _, host_path in hub.requests)
