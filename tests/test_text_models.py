"""effdl.zoo.text: pretrained text models as single-input modules (token ids -> embedding/logits)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from effdl.core.errors import ArtifactError, ConfigError, ModelError, UnsafeArtifactError
from effdl.zoo import PRETRAINED_TEXT, TextModel, load_text_model
from effdl.zoo.text import DECODERS, ENCODERS, CausalLM, SentenceEncoder, TextClassifier

# --- tiny random Hugging Face folders (real transformers objects, saved with save_pretrained) -----

WORDS = ("the a cat dog sat on mat ran fast slow red blue house tree river rain sun moon bird sings "
         "happy sad big small and is was it to of in").split()
VOCAB = 96  # model embedding rows (> tokenizer size, as real models pad their vocab)


def tokenizer(*, pad: bool = True, eos: bool = True, encoder: bool = True, extra: int = 0):
    """A fast tokenizer: [PAD]=0 (if pad), [UNK], [CLS]/[SEP] (encoder) or </s> (decoder, if eos),
    the words, and ``extra`` filler tokens (to make it larger than a model's embedding)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = (["[PAD]"] if pad else []) + ["[UNK]"] + (["[CLS]", "[SEP]"] if encoder else (["</s>"] if eos else []))
    vocab = {t: i for i, t in enumerate(specials + list(WORDS) + [f"w{i}" for i in range(extra)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if encoder:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    kw = {"unk_token": "[UNK]"}
    if pad:
        kw["pad_token"] = "[PAD]"
    if encoder:
        kw.update(cls_token="[CLS]", sep_token="[SEP]")
    elif eos:
        kw["eos_token"] = "</s>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


def config(model_type: str, **over):
    from transformers import AutoConfig

    kw = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
              intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    if model_type == "distilbert":
        kw = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64,
                  pad_token_id=0)
    elif model_type in ("gpt2", "gpt_bigcode"):
        kw = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    elif model_type == "gptj":
        kw = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, rotary_dim=8)
    elif model_type == "opt":
        kw = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
                  max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=0)
    elif model_type == "albert":
        kw["embedding_size"] = 16
    elif model_type in ("gemma", "gemma2", "gemma3_text", "qwen3"):
        kw["head_dim"] = 16
    elif model_type == "modernbert":
        kw.update(global_attn_every_n_layers=1, local_attention=16)
    elif model_type in ("roberta", "xlm-roberta", "camembert"):
        kw["max_position_embeddings"] = 66
    kw.update(over)
    return AutoConfig.for_model(model_type, **kw)


def model_dir(root: Path, model_type: str, *, decoder: bool = False, tok=None, seed: int = 0, **over) -> Path:
    """``root/model_type``: a random model of that type (safetensors) and a tokenizer."""
    from transformers import AutoModel, AutoModelForCausalLM

    torch.manual_seed(seed)
    folder = Path(root) / model_type
    model = (AutoModelForCausalLM if decoder else AutoModel).from_config(config(model_type, **over))
    model.save_pretrained(str(folder))
    (tok if tok is not None else tokenizer(encoder=not decoder)).save_pretrained(str(folder))
    return folder


PARAGRAPH = ("The village stood at the edge of a wide valley, where the river turned slowly towards the sea. "
             "Every morning the baker opened his shop before sunrise, and the smell of fresh bread drifted along "
             "the narrow street. Children walked to school past the old church, and in the evening their parents "
             "met in the square to talk about the weather, the harvest and the news from the town.")


@pytest.fixture(scope="module")
def minilm() -> TextModel:
    return load_text_model("zoo:minilm")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Folders of small random models: bert (encoder), llama (decoder, pad [PAD]), llama-eos (pads
    with eos: its tokenizer has no pad token)."""
    root = tmp_path_factory.mktemp("hf")
    model_dir(root, "bert")
    model_dir(root, "llama", decoder=True)
    eos_root = root / "eos"
    model_dir(eos_root, "llama", decoder=True, tok=tokenizer(pad=False, eos=True, encoder=False))
    (eos_root / "llama").rename(root / "llama-eos")
    return root


# --- MiniLM -------------------------------------------------------------------------------------

def test_minilm_equals_bench_pooling_of_raw_bert(minilm):
    from effdl.zoo.minilm import load_minilm, mean_pooled

    ids = minilm.encode(["A man is playing a guitar.", "The new movie is awesome, I loved every minute of it!",
                         "Rain is expected tomorrow."])
    assert ids.dtype == torch.int64 and (ids[:, -1] == minilm.pad_id).any()  # the batch is padded
    with torch.no_grad():
        ours = minilm.module(ids)
        bench = mean_pooled(load_minilm(), ids, (ids != 0).long())
    assert ours.shape == (3, 384)
    torch.testing.assert_close(ours, bench)
    assert isinstance(minilm.module, SentenceEncoder) and minilm.arch == "encoder"
    assert (minilm.pad_id, minilm.max_length, minilm.name) == (0, 512, "minilm")
    assert minilm.sha256 == {"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"}
    names = [n for n, _ in minilm.module.named_modules()]
    assert "backbone.encoder.layer.0.attention.self.query" in names and not any("pooler" in n for n in names)
    with pytest.raises(dataclasses.FrozenInstanceError):
        minilm.pad_id = 1


def test_minilm_cosine_of_known_pairs(minilm):
    ids = minilm.encode(["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell today."])
    with torch.no_grad():
        e = torch.nn.functional.normalize(minilm.module(ids), dim=-1)
    sim = e @ e.T
    assert 0.5 < sim[0, 1] < 0.85  # paraphrase: 0.667 measured with sentence-transformers' pooling
    assert sim[0, 2] < 0.2 and sim[1, 2] < 0.2  # unrelated: -0.05, -0.07


def test_minilm_padding_invariance(minilm):
    ids = minilm.encode(["Please remember to water the tomatoes before you leave."])
    padded = torch.cat([ids, torch.full((1, 9), minilm.pad_id)], 1)
    batch = minilm.encode(["Please remember to water the tomatoes before you leave.",
                           "The committee postponed its decision on the new bridge until next spring, after a long "
                           "and heated debate in the town hall."])
    assert batch.shape[1] > ids.shape[1]
    with torch.no_grad():
        ref = minilm.module(ids)
        torch.testing.assert_close(minilm.module(padded), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(minilm.module(batch)[:1], ref, rtol=0, atol=1e-5)


def test_encode_truncates_to_max_length(minilm):
    ids = minilm.encode(" ".join(["word"] * 50), max_length=16)
    assert ids.shape == (1, 16) and ids[0, -1] == minilm.tokenizer.sep_token_id
    assert minilm.encode("short", max_length=10_000).shape[1] == 3  # never past the model's own limit


# --- SmolLM2-135M -------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_loads_tied_with_low_perplexity():
    from effdl.data import cache_dir

    tm = load_text_model("zoo:smollm2-135m")  # the first run converts the GGUF (~20-30 s), later ones load
    lm = tm.module.backbone
    assert isinstance(tm.module, CausalLM) and tm.arch == "decoder" and tm.name == "smollm2-135m"
    assert sum(p.numel() for p in tm.module.parameters()) == 134_515_008
    assert lm.lm_head.weight is lm.model.embed_tokens.weight  # the tie survives save + load
    folder = Path(tm.source)
    assert folder.parent == cache_dir() / "pretrained" and folder.name.startswith("smollm2-135m-")
    assert tm.sha256["model.safetensors"] == json.loads((folder / "effdl.json").read_text())["sha256"]
    # the tokenizer's pad token is its end-of-text token <|im_end|>
    assert tm.pad_id == tm.tokenizer.eos_token_id == 2 and tm.max_length == 8192
    ids = tm.encode(PARAGRAPH)
    assert 60 < ids.shape[1] < 120
    with torch.no_grad():
        logits = tm.module(ids)
    assert logits.shape == (1, ids.shape[1], 49152)
    ppl = math.exp(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item())
    assert math.isfinite(ppl) and ppl < 100, ppl


def test_smollm2_cache_without_matching_sidecar_is_not_trusted(tmp_path):
    from effdl.zoo.smollm2 import SIDECAR, _valid

    (tmp_path / "model.safetensors").write_bytes(b"not the converted weights")
    assert _valid(tmp_path) is None  # no sidecar: a conversion that never finished
    (tmp_path / SIDECAR).write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.warns(UserWarning, match="unusable"):
        assert _valid(tmp_path) is None


# --- wrappers: ONNX export (batch and sequence dynamic), torch.compile, padding rules ----------

def _export_matches_eager(module, tmp_path, pad_id):
    import onnxruntime as ort

    example = torch.randint(4, 30, (2, 9))
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}
    with torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=(dims,), input_names=["ids"],
                                    optimize=True, verbose=False)
    path = tmp_path / "m.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, seq in ((3, 6), (1, 17)):
        ids = torch.randint(4, 30, (batch, seq))
        ids[0, seq - 2:] = pad_id  # a padded row
        with torch.no_grad():
            ref = module(ids).numpy()
        np.testing.assert_allclose(session.run(None, {"ids": ids.numpy()})[0], ref, rtol=1e-3, atol=1e-4)


def test_onnx_export_sentence_encoder(tiny, tmp_path):
    tm = load_text_model(f"hf:{tiny / 'bert'}")
    assert isinstance(tm.module, SentenceEncoder) and tm.max_length == 64
    _export_matches_eager(tm.module, tmp_path, tm.pad_id)


def test_onnx_export_text_classifier(tiny, tmp_path):
    tm = load_text_model(f"hf:{tiny / 'bert'}", head="classifier:3")
    assert isinstance(tm.module, TextClassifier) and tm.module.head.out_features == 3
    again = load_text_model(f"hf:{tiny / 'bert'}", head="classifier:3")
    torch.testing.assert_close(tm.module.head.weight, again.module.head.weight)  # seeded head
    assert tm.module(tm.encode(["the cat sat", "a dog"])).shape == (2, 3)
    _export_matches_eager(tm.module, tmp_path, tm.pad_id)


def test_onnx_export_causal_lm(tiny, tmp_path):
    tm = load_text_model(f"hf:{tiny / 'llama'}")
    assert isinstance(tm.module, CausalLM) and tm.arch == "decoder"
    _export_matches_eager(tm.module, tmp_path, tm.pad_id)


def test_torch_compile_fullgraph(tiny):
    for name, backend in (("bert", "inductor"), ("llama", "aot_eager")):  # inductor on llama: +10 s, checked once
        module = load_text_model(f"hf:{tiny / name}").module
        torch._dynamo.reset()
        compiled = torch.compile(module, fullgraph=True, dynamic=True, backend=backend)
        with torch.no_grad():
            for shape in ((2, 7), (3, 11)):
                ids = torch.randint(4, 30, shape)
                torch.testing.assert_close(compiled(ids), module(ids), rtol=1e-4, atol=1e-5)


def test_decoder_without_pad_pads_with_eos_and_masks_only_the_trailing_run(tiny):
    tm = load_text_model(f"hf:{tiny / 'llama-eos'}")
    eos = tm.tokenizer.eos_token_id
    assert tm.pad_id == eos and tm.tokenizer.pad_token_id == eos
    ids = tm.encode(["the cat sat on the mat", "a dog"])
    assert ids[1, -1] == eos
    inner = torch.tensor([[5, 6, eos, 7, 8, eos, eos]])  # an eos inside the text stays attended
    with torch.no_grad():
        full = tm.module.backbone(input_ids=inner[:, :5], attention_mask=torch.ones(1, 5, dtype=torch.long)).logits
        torch.testing.assert_close(tm.module(inner)[:, :5], full, rtol=0, atol=1e-6)
        one = tm.module(ids[1:, :3])
        torch.testing.assert_close(tm.module(ids)[1:, :3], one, rtol=0, atol=1e-5)


# --- bad inputs -----------------------------------------------------------------------------------

def test_missing_directory(tmp_path):
    with pytest.raises(ModelError, match="does not exist.*Hugging Face model folder"):
        load_text_model(f"hf:{tmp_path / 'nope'}")


def test_no_weights_file(tiny, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for f in (tiny / "bert").iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ArtifactError, match="no weights file.*save_pretrained"):
        load_text_model(f"hf:{folder}")


def test_pickle_only_weights_refused_unless_allowed(tiny, tmp_path):
    from safetensors.torch import load_file

    folder = tmp_path / "m"
    folder.mkdir()
    for f in (tiny / "bert").iterdir():
        if f.suffix == ".safetensors":
            torch.save(load_file(str(f)), folder / "pytorch_model.bin")
        else:
            (folder / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UnsafeArtifactError, match="pytorch_model.bin.*never unpickles.*allow_pickle"):
        load_text_model(f"hf:{folder}")
    allowed = load_text_model(f"hf:{folder}", allow_pickle=True)  # via torch.load(weights_only=True)
    ref = load_text_model(f"hf:{tiny / 'bert'}")
    ids = ref.encode(["the red bird sings"])
    torch.testing.assert_close(allowed.module(ids), ref.module(ids))
    assert set(allowed.sha256) == {"pytorch_model.bin"}


def test_truncated_weights(tiny, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for f in (tiny / "bert").iterdir():
        data = f.read_bytes()
        (folder / f.name).write_bytes(data[: len(data) // 2] if f.suffix == ".safetensors" else data)
    with pytest.raises(ArtifactError, match="cannot be loaded.*re-save"):
        load_text_model(f"hf:{folder}")


def test_unsupported_architecture(tmp_path):
    from transformers import T5Config, T5Model

    T5Model(T5Config(vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)).save_pretrained(
        str(tmp_path / "t5"))
    with pytest.raises(ModelError, match="'t5' is not a text encoder or causal LM.*Encoders: .*bert.*Causal LMs: .*llama"):
        load_text_model(f"hf:{tmp_path / 't5'}")


def test_tokenizer_larger_than_embedding(tmp_path):
    folder = model_dir(tmp_path, "bert", tok=tokenizer(extra=100))
    with pytest.raises(ModelError, match=f"tokens but the model's embedding has {VOCAB} rows.*another model"):
        load_text_model(f"hf:{folder}")


def test_decoder_without_pad_or_eos(tmp_path):
    folder = model_dir(tmp_path, "llama", decoder=True, tok=tokenizer(pad=False, eos=False, encoder=False))
    with pytest.raises(ModelError, match="neither a pad token nor an eos token.*pad_token"):
        load_text_model(f"hf:{folder}")


def test_missing_tokenizer(tiny, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((tiny / "bert" / name).read_bytes())
    with pytest.raises(ModelError, match="no tokenizer files.*save_pretrained"):
        load_text_model(f"hf:{folder}")


def test_bad_specs_and_heads(tiny):
    with pytest.raises(ModelError, match="unknown text model.*'minilm'"):
        load_text_model("zoo:minilmm")
    with pytest.raises(ModelError, match="zoo:<name>.*hf:PATH"):
        load_text_model(str(tiny / "bert"))
    for head in ("classifier:1", "classifier:x", "pooler"):
        with pytest.raises(ConfigError, match="classifier:<num_classes>"):
            load_text_model(f"hf:{tiny / 'bert'}", head=head)
    with pytest.raises(ConfigError, match="causal LM"):
        load_text_model(f"hf:{tiny / 'llama'}", head="embedding")
    assert set(PRETRAINED_TEXT) == {"minilm", "smollm2-135m"}


def test_cli_zoo_lists_the_text_models():
    from typer.testing import CliRunner

    from effdl.cli import app

    result = CliRunner().invoke(app, ["zoo"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "minilm" in result.output and "smollm2-135m" in result.output and "lenet5" in result.output


@pytest.mark.parametrize("model_type", ENCODERS + DECODERS)
def test_every_supported_architecture_loads_and_ignores_padding(model_type, tmp_path):
    # ONNX export (batch + sequence dynamic) of each was checked once by hand; here: load + padding
    decoder = model_type in DECODERS
    tm = load_text_model(f"hf:{model_dir(tmp_path, model_type, decoder=decoder)}")
    assert tm.arch == ("decoder" if decoder else "encoder") and 0 < tm.max_length <= 65  # roberta family: 66 - (pad + 1)
    ids = tm.encode(["the cat sat on the mat", "a dog ran"])
    padded = torch.cat([ids, torch.full((2, 3), tm.pad_id)], 1)
    with torch.no_grad():
        out, out_padded = tm.module(ids), tm.module(padded)
    if decoder:
        assert out.shape == (2, ids.shape[1], VOCAB)
        out_padded = out_padded[:, : ids.shape[1]]
    else:
        assert out.shape == (2, 32)
    torch.testing.assert_close(out_padded, out, rtol=0, atol=1e-5)
