"""Checkpoint formats: our round trip, the authors' key map, strict loading, load_model, atomic
saving and scripts/convert_checkpoint.py. Only the key-map round trip needs ../shared/golden."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import model
import utility
from model.authors_format import (authors_constants, authors_to_ours, infer_authors_model,
                                  map_authors_key, map_our_key, ours_to_authors)
from model.checkpoint import (FORMAT, CheckpointError, atomic_torch_save, load_model, load_weights,
                              read_checkpoint, save_checkpoint)
from helpers import TINY, images, small_filesystem, tiny
from scripts import convert_checkpoint
from scripts.golden.common import authors_state
from scripts.golden.models import golden_model

ROOT = Path(__file__).resolve().parents[1]
KEY_FILES = [(name, scale) for name in ("cdsr", "dasr") for scale in (2, 4)]


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("this object cannot be pickled")


def our_checkpoint(net: torch.nn.Module) -> dict:
    return {"format": FORMAT, "model_name": net.name, "scale": net.scale, "model": net.state_dict()}


def sr_of(net: torch.nn.Module, seed: int = 5) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(images(2, 3, 24, 24, seed=seed))


def trained_a_little(name: str, scale: int = 2) -> torch.nn.Module:
    """A tiny model whose BN statistics, key encoder and queue moved away from their init."""
    net = tiny(name, scale).train()
    with torch.no_grad():
        for p in net.encoder.query_encoder.parameters():
            p.add_(0.01)
        net(images(4, 3, 24, 24, seed=1), images(4, 3, 24, 24, seed=2), with_sr=False)
    return net


@pytest.mark.parametrize("name", sorted(TINY))
def test_our_format_round_trip(tmp_path, name):
    source = trained_a_little(name)
    path = tmp_path / "run" / "model_1.pt"
    save_checkpoint(path, model_name=name, scale=2, model=source.state_dict(), epoch=1,
                    phase="joint", config={"lr": 1e-4})
    stored = read_checkpoint(path)
    assert stored["format"] == FORMAT and stored["epoch"] == 1 and stored["optimizer"] is None
    target = tiny(name, seed=1)
    assert load_weights(target, path) == "ours"
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key
    assert torch.equal(sr_of(source), sr_of(target))


@pytest.mark.parametrize("name", ["cdsr", "dasr"])  # the authors' two formats
def test_authors_format_load_fills_the_key_encoder(name):
    source = trained_a_little(name)
    authors = ours_to_authors(source.state_dict(), name)
    assert all(k.startswith(("G.", "E.encoder_q.")) for k in authors)
    target = tiny(name, seed=1)
    fresh_queue = target.encoder.queue.clone()
    fresh_key_buffers = {n: b.clone() for n, b in target.encoder.key_encoder.named_buffers()}
    assert load_weights(target, authors) == "authors"
    assert torch.equal(sr_of(source), sr_of(target))
    for (_, p_q), (_, p_k) in zip(target.encoder.query_encoder.named_parameters(),
                                  target.encoder.key_encoder.named_parameters()):
        assert torch.equal(p_q, p_k) and not p_k.requires_grad
    for n, b in target.encoder.key_encoder.named_buffers():  # like MoCo: parameters only
        assert torch.equal(b, fresh_key_buffers[n]), n
    assert torch.equal(target.encoder.queue, fresh_queue) and int(target.encoder.queue_ptr) == 0


@pytest.mark.parametrize("name,scale", KEY_FILES)
def test_authors_key_map_round_trip(golden_dir, name, scale):
    keys = json.loads((golden_dir / f"{name}_keys_x{scale}.json").read_text())["keys"]
    shapes = {k["key"]: tuple(k["shape"]) for k in keys}
    authors = authors_state(golden_dir, name, scale)
    assert infer_authors_model(authors) == (name, scale)
    ours = authors_to_ours(authors, name)
    own = golden_model(golden_dir, name, scale).state_dict()
    saved = {k for k in own if not k.startswith("encoder.key_encoder.")} - {"encoder.queue",
                                                                           "encoder.queue_ptr"}
    assert set(ours) == saved
    constants = authors_constants(name)
    for key, shape in shapes.items():
        expected = constants[key] if key in constants else own[map_authors_key(key, name)]
        assert tuple(expected.shape) == shape, key
    back = ours_to_authors(ours, name)
    assert list(back) == list(shapes)  # same keys, in the authors' order
    for key, value in back.items():
        if key in constants:  # ours: correctly rounded 255*mean; theirs may differ by 1 ulp
            assert torch.allclose(value, authors[key], rtol=0, atol=1e-4), key
        else:
            assert value is authors[key], key


@pytest.mark.parametrize("name", ["cdsr", "dasr"])
def test_every_state_dict_key_maps_both_ways(name):
    own = model.build_model(name, scale=4, queue_size=8).state_dict()
    full = ours_to_authors(own, name, keep_momentum=True)
    assert len(full) == len(own) + len(authors_constants(name))
    for key in own:
        assert map_authors_key(map_our_key(key, name), name) == key


def test_momentum_keys_map():
    assert map_authors_key("E.encoder_k.conv1.conv1.weight", "cdsr") == \
        "encoder.key_encoder.pixel_branch.layers.0.conv.weight"
    assert map_authors_key("E.encoder_k.feature_bank.weight", "CDSR") == \
        "encoder.key_encoder.codebook.entries"
    assert map_authors_key("E.encoder_k.E.16.running_var", "dasr") == \
        "encoder.key_encoder.layers.5.norm.running_var"
    for name in ("cdsr", "dasr"):
        assert map_authors_key("E.queue", name) == "encoder.queue"
        assert map_authors_key("E.queue_ptr", name) == "encoder.queue_ptr"
    assert map_authors_key("G.RRDB_trunk.9.RDB3.conv5.bias", "cdsr") == \
        "generator.blocks.9.dense_blocks.2.convs.4.bias"
    assert map_authors_key("G.body.4.body.5.weight", "dasr") == "generator.groups.4.conv.weight"
    assert map_authors_key("G.body.5.weight", "dasr") == "generator.body_conv.weight"
    for bad in ("G.sub_mean.bias", "G.body.0.body.0.da_conv1.bogus.weight",
                "E.encoder_q.E.2.weight", "G.head.0.weight.extra", "G.body.01.body.0.conv1.weight"):
        with pytest.raises(KeyError):
            map_authors_key(bad, "dasr")


def test_wrong_model_or_scale_names_both():
    dasr_x4 = our_checkpoint(tiny("dasr", 4))
    with pytest.raises(CheckpointError, match="checkpoint is for DASR x4 but the model is CDSR x2"):
        load_weights(tiny("cdsr", 2), dasr_x4)
    with pytest.raises(CheckpointError, match="DASR x4 but the model is DASR x2"):
        load_weights(tiny("dasr", 2), dasr_x4)
    authors_cdsr_x4 = ours_to_authors(tiny("cdsr", 4).state_dict(), "cdsr")
    with pytest.raises(CheckpointError, match="is for CDSR x4 but the model is CDSR x2"):
        load_weights(tiny("cdsr", 2), authors_cdsr_x4)
    with pytest.raises(CheckpointError, match="is for CDSR x4 but the model is DASR x4"):
        load_weights(tiny("dasr", 4), authors_cdsr_x4)


def test_missing_unexpected_and_misshaped_keys_are_named():
    net = tiny("cdsr")
    good = our_checkpoint(net)
    missing = dict(good, model={k: v for k, v in good["model"].items()
                                if k != "generator.body_conv.bias"})
    with pytest.raises(CheckpointError, match=r"missing keys: generator\.body_conv\.bias"):
        load_weights(net, missing)
    unexpected = dict(good, model={**good["model"], "generator.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: generator\.extra\.weight"):
        load_weights(net, unexpected)
    state = dict(good["model"])
    state["generator.first_conv.weight"] = torch.zeros(1, 3, 3, 3)
    with pytest.raises(CheckpointError, match=r"wrong shapes: generator\.first_conv\.weight"):
        load_weights(net, dict(good, model=state))
    authors = ours_to_authors(good["model"], "cdsr")
    authors["G.bogus.weight"] = torch.zeros(1)
    del authors["G.trunk_conv.bias"]
    with pytest.raises(CheckpointError) as error:
        load_weights(net, authors)
    assert "G.bogus.weight" in str(error.value)
    assert "generator.body_conv.bias (authors' G.trunk_conv.bias)" in str(error.value)


def test_dasr_mean_shift_must_hold_the_standard_constants():
    authors = ours_to_authors(tiny("dasr").state_dict(), "dasr")
    assert authors_to_ours(authors, "dasr").keys() == tiny("dasr").state_dict().keys() - {
        k for k in tiny("dasr").state_dict() if k.startswith("encoder.key_encoder.")
        or k in ("encoder.queue", "encoder.queue_ptr")}
    authors["G.add_mean.bias"] = authors["G.add_mean.bias"] * 0.5
    with pytest.raises(CheckpointError, match="G.add_mean.bias does not hold"):
        authors_to_ours(authors, "dasr")


def test_atomic_save_leaves_no_temp_file(tmp_path):
    net = tiny("dasr")
    path = tmp_path / "model.pt"
    save_checkpoint(path, model_name="dasr", scale=2, model=net.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot be pickled"):  # the save fails midway
        save_checkpoint(path, model_name="dasr", scale=2, model=net.state_dict(),
                        optimizer={"bad": Unpicklable()})
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert path.read_bytes() == before


@pytest.mark.parametrize("link", ["context", "cause"])
def test_a_full_disk_is_recognised_through_the_exception_chain(link, tmp_path, monkeypatch):
    # torch 2.14.1's zip writer: the failed write's OSError, then this RuntimeError at closing.
    def full_disk(obj, handle):
        no_space = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        if link == "cause":
            raise error from no_space
        try:
            raise no_space
        except OSError:
            raise error

    monkeypatch.setattr(torch, "save", full_disk)
    path = tmp_path / "last.pt"
    with pytest.raises(OSError) as raised:
        atomic_torch_save({"epoch": 1}, path)
    assert str(raised.value) == (f"cannot write checkpoint {path} (No space left on device); the "
                                 "previous file there, if any, is intact: free some space or fix "
                                 "the permissions, then --resume")
    assert list(tmp_path.iterdir()) == []                 # no temp file left


def test_a_real_full_disk_keeps_the_previous_file(tmp_path):
    with small_filesystem(tmp_path / "disk", "1m") as disk:
        atomic_torch_save({"weights": torch.zeros(10)}, disk / "last.pt")
        before = (disk / "last.pt").read_bytes()
        with pytest.raises(OSError, match=r"cannot write checkpoint .*last.pt \(No space left on device\)"):
            atomic_torch_save({"weights": torch.zeros(500_000)}, disk / "last.pt")     # 2 MB
        assert [p.name for p in disk.iterdir()] == ["last.pt"]
        assert (disk / "last.pt").read_bytes() == before


def test_bad_files_and_fields_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_weights(tiny("dasr"), corrupt)
    whole = tmp_path / "whole.pt"
    save_checkpoint(whole, model_name="dasr", scale=2, model=tiny("dasr").state_dict())
    for cut in (0, 4000):
        corrupt.write_bytes(whole.read_bytes()[:cut])
        with pytest.raises(CheckpointError, match="corrupt.pt .*empty, truncated or corrupt"):
            read_checkpoint(corrupt)
    with pytest.raises(CheckpointError, match="not a recognised checkpoint"):
        load_weights(tiny("dasr"), {"weights": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unsupported checkpoint format"):
        load_weights(tiny("dasr"), {"format": "other/2"})
    with pytest.raises(ValueError, match="unknown field"):
        save_checkpoint(tmp_path / "x.pt", model_name="dasr", scale=2, model={}, epochs=3)
    with pytest.raises(ValueError, match=r"config\['run_dir'\] is a PosixPath"):
        save_checkpoint(tmp_path / "x.pt", model_name="dasr", scale=2, model={},
                        config={"lr": 1e-4, "run_dir": tmp_path})
    assert not [p for p in tmp_path.iterdir() if "x.pt" in p.name]


@pytest.mark.parametrize("name", sorted(TINY))
def test_load_model_rebuilds_what_the_file_holds(tmp_path, name):
    source = trained_a_little(name, scale=3)
    path = tmp_path / "ours.pt"
    save_checkpoint(path, model_name=name, scale=3, model=source.state_dict(), model_kwargs=TINY[name])
    loaded = load_model(path)
    assert (loaded.name, loaded.scale, loaded.training) == (name, 3, False)
    assert torch.equal(sr_of(source), sr_of(loaded))
    assert load_model(path, "cpu", model_name=name.upper(), scale=3).scale == 3


def test_load_model_reads_the_authors_files_and_checks_what_was_asked(tmp_path):
    torch.manual_seed(0)
    paper = model.build_model("dasr", scale=2)                  # authors' files are paper size
    path = tmp_path / "authors.pt"
    torch.save(ours_to_authors(paper.state_dict(), "dasr"), path)
    assert torch.equal(sr_of(paper), sr_of(load_model(path)))
    with pytest.raises(CheckpointError, match="authors.pt holds DASR x2, not CDSR x2 as requested"):
        load_model(path, model_name="cdsr")
    with pytest.raises(CheckpointError, match="holds DASR x2, not DASR x4 as requested"):
        load_model(path, scale=4)


def test_state_dicts_of_wrapped_models_load_with_their_prefixes_removed(tmp_path, caplog):
    """torch.save(nn.DataParallel(net).state_dict()) of the authors' model ('module.'), a compiled
    model of ours ('_orig_mod.'), and both nested: loaded as the bare model, and said."""
    torch.manual_seed(0)
    paper = model.build_model("dasr", scale=2)
    authors = ours_to_authors(paper.state_dict(), "dasr")
    torch.save({f"module.{k}": v for k, v in authors.items()}, tmp_path / "parallel.pt")
    with caplog.at_level("INFO", logger="cdsr"):
        assert torch.equal(sr_of(paper), sr_of(load_model(tmp_path / "parallel.pt")))
    assert "removed the key prefix 'module.'" in caplog.text and "parallel.pt" in caplog.text
    source = trained_a_little("cdsr")
    compiled = {f"module._orig_mod.{k}": v for k, v in source.state_dict().items()}
    save_checkpoint(tmp_path / "compiled.pt", model_name="cdsr", scale=2, model=compiled)
    target = tiny("cdsr", seed=1)
    assert load_weights(target, tmp_path / "compiled.pt") == "ours"
    assert torch.equal(sr_of(source), sr_of(target))
    assert load_weights(tiny("cdsr", seed=1), our_checkpoint(source) | {"model": compiled}) == "ours"
    partly = dict(source.state_dict())
    partly["module.extra"] = partly.pop("generator.first_conv.weight")
    with pytest.raises(CheckpointError, match="module.extra"):     # not a wrapper's: named
        load_weights(tiny("cdsr"), our_checkpoint(source) | {"model": partly})


def test_save_checkpoint_takes_the_model_names_of_the_registry(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'CDRS'; choose one of: cdsr, cdsr-dasr-encoder, .*, dasr"):
        save_checkpoint(tmp_path / "x.pt", model_name="CDRS", scale=2, model={})


def _convert(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "convert_checkpoint.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)


def test_convert_checkpoint_script_both_ways(tmp_path):
    torch.manual_seed(0)
    paper = model.build_model("dasr", scale=2)
    authors = ours_to_authors(paper.state_dict(), "dasr")
    source, ours, back = tmp_path / "authors.pt", tmp_path / "ours.pt", tmp_path / "back.pt"
    torch.save(authors, source)
    result = _convert(str(source), str(ours), "--to", "ours", "--model", "dasr")
    assert result.returncode == 0, result.stderr
    converted = read_checkpoint(ours)
    assert (converted["format"], converted["model_name"], converted["scale"]) == (FORMAT, "dasr", 2)
    via_ours = model.build_model("dasr", scale=2)
    assert load_weights(via_ours, ours) == "ours"
    assert torch.equal(sr_of(paper), sr_of(via_ours))
    result = _convert(str(ours), str(back), "--to", "authors", "--scale", "2")
    assert result.returncode == 0, result.stderr
    restored = read_checkpoint(back)
    assert list(restored) == list(authors)
    assert all(torch.allclose(restored[k], authors[k], rtol=0, atol=1e-4) for k in authors)


def test_convert_checkpoint_script_rejects_bad_input(tmp_path, capsys):
    ours = tmp_path / "ours.pt"
    save_checkpoint(ours, model_name="dasr", scale=2, model=tiny("dasr").state_dict(),
                    model_kwargs=TINY["dasr"])
    cases = [
        ((str(tmp_path / "absent.pt"), str(tmp_path / "out.pt"), "--to", "ours"),
         "checkpoint not found"),
        ((str(ours), str(tmp_path / "out.pt"), "--to", "authors", "--model", "cdsr"),
         "holds DASR x2, not CDSR x2 as requested"),
        ((str(ours), str(tmp_path / "out.pt"), "--to", "ours"), "already in our format"),
        ((str(ours), str(tmp_path / "out.pt"), "--to", "theirs"), "invalid choice: 'theirs'"),
    ]
    for args, message in cases:
        assert utility.run_cli(lambda: convert_checkpoint.main(list(args))) == 2
        stderr = capsys.readouterr().err
        assert stderr.startswith("error: ") and message in stderr
        assert stderr.count("\n") == 1, stderr
    assert not (tmp_path / "out.pt").exists()
