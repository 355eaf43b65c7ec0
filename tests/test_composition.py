"""The composition contract: front ends build encoders and open stores only through
``regatt_sdk.compose`` / ``regatt_sdk.collection``; encoder options are honoured or refused; one
compatibility rule between a model and a store (the card hash without tool versions, the legacy
hash accepted); one ROI parser and image resolver."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from regatt_sdk.card import ModelCard, read_card
from regatt_sdk.compose import (
    EncoderOptions,
    OptionError,
    RoiError,
    check_compatible,
    open_encoder,
    open_store,
    parse_roi,
    resolve_image,
)
from regatt_sdk.store import FeatureStore, StoreError

SDK = Path(__file__).resolve().parents[1] / "sdk" / "regatt_sdk"
TINY = Path(__file__).parent / "fixtures" / "tiny.onnx"
#: the front ends: every CLI command, the server, the bench, the Ray actors
FRONT_ENDS = sorted([*(SDK / "cli").glob("*.py"), *(SDK / "serve").glob("*.py"), *(SDK / "bench").glob("*.py")])
STORE_OPENERS = ("open", "open_for_append", "create")


def violations(source: str, where: str) -> list[str]:
    """``Encoder(...)`` and ``FeatureStore.open/open_for_append/create(...)`` calls in
    ``source``, and in the code strings it runs in other processes (importing the classes for
    type annotations is fine)."""
    bad = []
    tree = ast.parse(source, where)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == "Encoder") or (
                isinstance(f, ast.Attribute) and f.attr == "Encoder"
            ):
                bad.append(f"{where}:{node.lineno}: Encoder(...)")
            if (
                isinstance(f, ast.Attribute)
                and f.attr in STORE_OPENERS
                and isinstance(f.value, ast.Name)
                and f.value.id == "FeatureStore"
            ):
                bad.append(f"{where}:{node.lineno}: FeatureStore.{f.attr}(...)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value:
            try:  # code a front end runs in another process (e.g. the bench's RSS probe)
                inner = ast.parse(node.value)
            except SyntaxError:
                continue
            if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(inner)):
                bad += violations(node.value, f"{where}:{node.lineno}:<code>")
    return bad


def test_front_ends_build_encoders_and_open_stores_only_through_the_composition_layer():
    assert len(FRONT_ENDS) > 10
    bad = []
    for path in FRONT_ENDS:
        bad += violations(path.read_text(encoding="utf-8"), str(path.relative_to(SDK.parent)))
    # the Ray actors build their encoders through compose too
    dist = SDK / "distributed.py"
    bad += [v for v in violations(dist.read_text(encoding="utf-8"), "distributed.py") if "Encoder" in v]
    assert not bad, "front ends bypassing regatt_sdk.compose / regatt_sdk.collection:\n" + "\n".join(bad)


def test_the_scan_finds_what_it_forbids():
    code = """
from ..encoder import Encoder
from ..store import FeatureStore
def f(m, p):
    e = Encoder(m)
    s = FeatureStore.open(p)
    t = FeatureStore.open_for_append(p, card_hash="x", dim=1, resume=True)
    return e, s, t
RSS = "from regatt_sdk.encoder import Encoder\\nenc = Encoder('m')"
"""
    found = violations(code, "x.py")
    assert len(found) == 4, found
    assert violations("from ..compose import open_encoder\nopen_encoder('m')", "ok.py") == []


# -- options ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, words",
    [
        ({"engine": "tensorflow"}, "unknown engine"),
        ({"precision": "int8"}, "separate files"),
        ({"memory": "huge"}, "unknown memory plan"),
        ({"threads": 0}, "at least 1"),
        ({"max_side": 8}, "too small"),
        ({"device": "quantum"}, "quantum"),
    ],
)
def test_bad_options_are_refused_when_made(changes, words):
    with pytest.raises(Exception, match=words):
        EncoderOptions(**changes)


def test_options_are_frozen_and_reach_the_encoder():
    opts = EncoderOptions(device="cpu", engine="onnxruntime", threads=1, max_side=96, query_scales="1,1.5")
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.max_side = 64  # type: ignore[misc]
    enc = open_encoder(TINY, opts)
    assert enc.max_side == 96 and enc.prepare_side == 96
    assert enc.query_scales == (1.0, 1.5)
    assert enc.engine.name == "onnxruntime" and enc.engine_asked == "onnxruntime"
    assert enc.engine.describe()["threads"] == 1
    assert opts.replace(max_side=None).non_default == {
        "device": "cpu",
        "engine": "onnxruntime",
        "threads": 1,
        "query_scales": "1,1.5",
    }


def test_every_encoding_command_has_the_one_option_group():
    from typer.main import get_command

    from regatt_sdk.cli.app import build

    group = {"--device", "--engine", "--precision", "--memory", "--threads", "--max-side"}
    cli = get_command(build())
    for name in ("encode", "index", "search", "eval", "explain", "serve", "dedup"):
        opts = {o for p in cli.commands[name].params for o in p.opts}
        assert group <= opts, (name, group - opts)
        max_side = next(p for p in cli.commands[name].params if "--max-side" in p.opts)
        assert max_side.min == 16 and "model card" in max_side.help, name  # one definition of --max-side


def test_encode_ray_refuses_options_it_cannot_pass(tmp_path, capsys):
    """--engine / --precision are checked before any Ray cluster starts; OpenVINO on GPU actors is
    refused, not dropped."""
    from regatt_sdk.cli.app import main
    from regatt_sdk.distributed import encode_with_ray

    img = tmp_path / "a.png"
    img.write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        main(["encode", str(TINY), str(img), "-o", str(tmp_path / "s"), "--ray", "local", "--engine", "tensorflow"])
    assert exc.value.code == 2 and "unknown engine" in capsys.readouterr().err
    pytest.importorskip("ray")
    with pytest.raises(OptionError, match="CPU actors"):
        encode_with_ray(TINY, [str(img)], tmp_path / "s2", options=EncoderOptions(engine="openvino"), use_gpu=True)
    with pytest.raises(OptionError, match="not beside"):
        encode_with_ray(TINY, [str(img)], tmp_path / "s3", options=EncoderOptions(), threads=2)


def test_serve_refuses_query_scales():
    pytest.importorskip("fastapi")
    from regatt_sdk.serve.app import ServeConfig, Service

    svc = Service(ServeConfig(model=TINY, options=EncoderOptions(device="cpu", query_scales="1.5")))
    with pytest.raises(OptionError, match="query scales"):
        svc.load()
    assert ServeConfig(model=TINY).options.memory == "arena"


# -- one ROI parser, one image resolver ---------------------------------------------------------
def test_parse_roi():
    assert parse_roi("10,20,300,400") == (10.0, 20.0, 300.0, 400.0)
    assert parse_roi("10 20 300 400") == (10.0, 20.0, 300.0, 400.0)
    assert parse_roi(None) is None and parse_roi("") is None
    for bad, words in [("1,2,3", "four numbers"), ("5,5,1,9", "x1 < x2"), ("0,0,nan,4", "finite")]:
        with pytest.raises(RoiError, match=words):
            parse_roi(bad, "--box")
    with pytest.raises(RoiError, match="^--box"):
        parse_roi("a,b,c,d", "--box")


def test_serve_and_cli_share_the_roi_rule():
    pytest.importorskip("fastapi")
    from regatt_sdk.serve.app import ApiError
    from regatt_sdk.serve.app import parse_roi as serve_roi

    assert serve_roi("1,2,3,4") == parse_roi("1,2,3,4")
    with pytest.raises(ApiError) as exc:
        serve_roi("0,0,inf,4")
    assert exc.value.status == 422 and "finite" in exc.value.message


def test_resolve_image(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(b"x")
    assert resolve_image(str(tmp_path / "a.jpg")) == tmp_path / "a.jpg"
    assert resolve_image("a", tmp_path) == tmp_path / "a.jpg"
    assert resolve_image("sub/b.png", tmp_path) == tmp_path / "sub" / "b.png"
    assert resolve_image("missing", tmp_path) is None and resolve_image("a") is None
    (tmp_path / "tab\there.jpg").write_bytes(b"x")  # a --db table holds the displayed name
    assert resolve_image("tab\\there.jpg", tmp_path) == tmp_path / "tab\there.jpg"


# -- the card hash and the compatibility rule ---------------------------------------------------
def _other_tools(card: ModelCard) -> ModelCard:
    prov = dict(card.provenance, parity={"min_cosine": 0.999, "provider": "another onnxruntime"})
    return dataclasses.replace(card, versions={"torch": "9.9", "onnx": "9.9", "python": "3.99"}, provenance=prov)


def test_card_hash_identifies_the_model_not_the_tools():
    card = read_card(TINY)
    elsewhere = _other_tools(card)
    assert elsewhere.hash == card.hash  # re-exported with other tool versions: same model
    assert elsewhere.legacy_hash != card.legacy_hash  # the old hash orphaned the stores
    assert "versions" not in json.loads(card.identity_json()) and "versions" in json.loads(card.to_json())
    for change in ({"max_side": 512}, {"whitening": "other.npz"}, {"mean": (0.0, 0.0, 0.0)}, {"dim": 64}):
        assert dataclasses.replace(card, **change).hash != card.hash, change
    golden = dataclasses.replace(card.golden, vector=[v + 0.01 for v in card.golden.vector])
    assert dataclasses.replace(card, golden=golden).hash != card.hash  # other weights
    # where the files were on the exporting machine is not the model; which files were is
    here = dataclasses.replace(card, provenance={"official": "/data/release", "calibration": {"folder": "/d/photos/"}})
    there = dataclasses.replace(card, provenance={"official": "D:\\mnt\\release", "calibration": {"folder": "photos"}})
    other = dataclasses.replace(card, provenance={"official": "/data/release2", "calibration": {"folder": "/d/photos"}})
    assert here.hash == there.hash != other.hash and here.legacy_hash != there.legacy_hash
    assert card.matches(card.hash) and card.matches(card.legacy_hash)
    assert not card.matches(elsewhere.legacy_hash) and not card.matches(None)


def test_card_hashes_are_stable():
    """Stores record these: a change of the hashing rule orphans every store made before (keep
    the old rule as an accepted hash, as legacy_hash does, before changing it)."""
    card = read_card(TINY)
    assert card.legacy_hash == "06bb9644197d5105"  # the whole JSON, as before
    assert card.hash == "76d921c39469c73f"  # without tool versions, measurements, directories


def _store(path: Path, card_hash: str, dim: int, rows: int = 2) -> Path:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(rows, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    with FeatureStore.create(path, card_hash=card_hash, dim=dim) as st:
        st.append([f"r{i}" for i in range(rows)], v)
    return path


def test_one_compatibility_rule(tmp_path):
    card = read_card(TINY)
    assert open_store(_store(tmp_path / "new", card.hash, card.dim), card).count == 2
    legacy = open_store(_store(tmp_path / "legacy", card.legacy_hash, card.dim), card)
    assert legacy.card_hash == card.legacy_hash  # made before the hash change: still this model's
    with pytest.raises(StoreError, match="another model"):
        open_store(_store(tmp_path / "other", "0123456789abcdef", card.dim), card)
    with pytest.raises(StoreError, match="holds 7-d"):
        check_compatible(card, card.hash, 7, "store s")
    FeatureStore.create(tmp_path / "empty", card_hash=card.hash, dim=card.dim).close()
    with pytest.raises(StoreError, match="is empty"):
        open_store(tmp_path / "empty", card)
    assert open_store(tmp_path / "empty", card, allow_empty=True).count == 0


def test_cli_commands_share_the_rule(tmp_path, capsys):
    """search (a warning before), serve and dedup (errors before) now all refuse another model's
    store with the same words, and all accept a store recording the model's legacy hash."""
    from regatt_sdk.cli.app import main

    card = read_card(TINY)
    other = _store(tmp_path / "other", "0123456789abcdef", card.dim)
    q = tmp_path / "q.png"
    import cv2

    cv2.imwrite(str(q), np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    for args in (
        ["search", str(TINY), str(other), str(q)],
        ["dedup", str(TINY), "--store", str(other), "-o", str(tmp_path / "o"), "--threshold", "0.9"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2 and "was made with another model" in capsys.readouterr().err, args
    legacy = _store(tmp_path / "legacy", card.legacy_hash, card.dim, rows=3)
    with pytest.raises(SystemExit) as exc:
        main(["search", str(TINY), str(legacy), str(q), "--top", "2", "--device", "cpu"])
    out = capsys.readouterr()
    assert exc.value.code in (0, None), out.err
    assert len(out.out.strip().splitlines()) == 2


# -- logging -------------------------------------------------------------------------------------
def test_quiet_as_a_library_verbose_on_the_cli(tmp_path, capsys):
    import subprocess
    import sys

    code = (
        "import sys, logging\n"
        "from regatt_sdk.compose import EncoderOptions, open_encoder\n"
        "if sys.argv[2] == 'on': logging.basicConfig(level=logging.INFO)\n"
        "open_encoder(sys.argv[1], EncoderOptions(device='cpu'))\n"
    )
    for mode in ("off", "on"):
        done = subprocess.run([sys.executable, "-c", code, str(TINY), mode], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert ("regatt_sdk.compose" in done.stderr) == (mode == "on"), (mode, done.stderr)

    from regatt_sdk.cli.app import main

    store = _store(tmp_path / "s", read_card(TINY).hash, read_card(TINY).dim, rows=3)
    q = tmp_path / "q.png"
    import cv2

    cv2.imwrite(str(q), np.random.default_rng(2).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    for flags, shown in (([], False), (["-v"], True)):
        with pytest.raises(SystemExit) as exc:
            main([*flags, "search", str(TINY), str(store), str(q), "--top", "1", "--device", "cpu"])
        err = capsys.readouterr().err
        assert exc.value.code in (0, None), err
        assert ("regatt_sdk.compose: " in err) == shown, err
        assert ("onnxruntime" in err) == shown


def test_ray_actors_get_every_encoder_option(tmp_path):
    """The Ray actor builds its encoder from the same options (engine, precision, memory reach it)
    and shards record the output store's hash (a legacy one on resume)."""
    pytest.importorskip("openvino")
    from regatt_sdk.distributed import EncodeActor

    actor = EncodeActor(
        str(TINY), str(tmp_path), device="cpu", threads=1, max_side=64, engine="openvino", card_hash="legacy0123456789"
    )
    assert actor.encoder.engine.name == "openvino" and actor.encoder.max_side == 64
    assert actor.card_hash == "legacy0123456789"
    plain = EncodeActor(str(TINY), str(tmp_path), device="cpu", threads=1, memory="arena")
    assert plain.encoder.engine.name == "onnxruntime" and plain.card_hash == plain.encoder.card.hash


@pytest.mark.slow
def test_encode_ray_cli_with_engine_options_and_a_legacy_store(tmp_path, capsys):
    pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    import cv2

    from regatt_sdk.cli.app import main

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(4)
    for k in range(4):
        cv2.imwrite(str(src / f"{k}.png"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    card = read_card(TINY)
    legacy = tmp_path / "legacy"
    FeatureStore.create(legacy, card_hash=card.legacy_hash, dim=card.dim, model={"max_side": 96}).close()
    args = ["encode", str(TINY), str(src), "-o", str(legacy), "--resume", "--ray", "local", "--ray-actors", "1"]
    args += ["--device", "cpu", "--engine", "onnxruntime", "--memory", "arena", "--threads", "1", "--max-side", "96"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--no-progress"])
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err
    st = FeatureStore.open(legacy)
    assert st.count == 4 and st.card_hash == card.legacy_hash
    single = open_encoder(TINY, EncoderOptions(device="cpu", max_side=96)).encode(sorted(str(p) for p in src.iterdir()))
    np.testing.assert_allclose(st.vectors, single, atol=1e-5)
