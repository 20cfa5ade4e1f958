"""The pure-PyTorch ELMo reader, on a small weight file in the original TensorFlow layout.

Padding, save/load and training through the recipe are in test_backbone_contract.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from nlptransfer import ModelLoadError, load_backbone
from nlptransfer.backbones.elmo import word_char_ids

OPTIONS = {
    "lstm": {"use_skip_connections": True, "projection_dim": 8, "cell_clip": 3, "proj_clip": 3, "dim": 12,
             "n_layers": 2},
    "char_cnn": {"activation": "relu", "filters": [[1, 4], [2, 4], [3, 8]], "n_highway": 1,
                 "embedding": {"dim": 4}, "n_characters": 262, "max_characters_per_token": 50},
}  # fmt: skip
FILTERS, PROJ, CELL = 16, 8, 12


def write_elmo(folder: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """An ELMo weight file with the original dataset names and TensorFlow shapes."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {"char_embed": rng.normal(size=(261, 4))}
    for i, (width, num) in enumerate(OPTIONS["char_cnn"]["filters"]):
        arrays[f"CNN/W_cnn_{i}"] = rng.normal(size=(1, width, 4, num)) * 0.5
        arrays[f"CNN/b_cnn_{i}"] = rng.normal(size=num) * 0.1
    for name in ("W_transform", "W_carry"):
        arrays[f"CNN_high_0/{name}"] = rng.normal(size=(FILTERS, FILTERS)) * 0.3
    for name in ("b_transform", "b_carry"):
        arrays[f"CNN_high_0/{name}"] = rng.normal(size=FILTERS) * 0.1
    arrays["CNN_proj/W_proj"] = rng.normal(size=(FILTERS, PROJ)) * 0.3
    arrays["CNN_proj/b_proj"] = rng.normal(size=PROJ) * 0.1
    for direction in (0, 1):
        for layer in (0, 1):
            cell = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
            arrays[f"{cell}/W_0"] = rng.normal(size=(PROJ + PROJ, 4 * CELL)) * 0.3
            arrays[f"{cell}/B"] = rng.normal(size=4 * CELL) * 0.1
            arrays[f"{cell}/W_P_0"] = rng.normal(size=(CELL, PROJ)) * 0.3
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "options.json").write_text(json.dumps(OPTIONS))
    with h5py.File(folder / "weights.hdf5", "w") as fout:
        for name, value in arrays.items():
            fout.create_dataset(name, data=value.astype(np.float32))
    return {k: v.astype(np.float32) for k, v in arrays.items()}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def reference_token_layer(arrays: dict[str, np.ndarray], char_ids: np.ndarray) -> np.ndarray:
    """ELMo's layer 0 computed the TensorFlow way, straight from the file's arrays."""
    table = np.concatenate([np.zeros((1, 4), np.float32), arrays["char_embed"]])
    out = []
    for word in char_ids:
        x = table[word]  # (50, 4)
        pooled = []
        for i, (width, _) in enumerate(OPTIONS["char_cnn"]["filters"]):
            w, b = arrays[f"CNN/W_cnn_{i}"][0], arrays[f"CNN/b_cnn_{i}"]
            conv = np.stack([np.einsum("kd,kdn->n", x[t : t + width], w) + b for t in range(50 - width + 1)])
            pooled.append(np.maximum(conv.max(0), 0))
        h = np.concatenate(pooled)
        gate = sigmoid(h @ arrays["CNN_high_0/W_carry"] + arrays["CNN_high_0/b_carry"])
        h = (
            gate * np.maximum(h @ arrays["CNN_high_0/W_transform"] + arrays["CNN_high_0/b_transform"], 0)
            + (1 - gate) * h
        )
        out.append(h @ arrays["CNN_proj/W_proj"] + arrays["CNN_proj/b_proj"])
    return np.stack(out)


def reference_lstm(
    arrays: dict[str, np.ndarray], inputs: np.ndarray, direction: int = 0, layer: int = 0
) -> np.ndarray:
    """TensorFlow's LSTMCell(num_proj, cell_clip, proj_clip, forget_bias=1) over one sentence.

    Direction 1 is the backward LM: it reads the sentence right to left.
    """
    cell = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
    c, m, outputs = np.zeros(CELL), np.zeros(PROJ), []
    for x in inputs[::-1] if direction == 1 else inputs:
        z = np.concatenate([x, m]) @ arrays[f"{cell}/W_0"] + arrays[f"{cell}/B"]
        i, j, f, o = np.split(z, 4)
        c = np.clip(sigmoid(f + 1.0) * c + sigmoid(i) * np.tanh(j), -3, 3)
        m = np.clip((sigmoid(o) * np.tanh(c)) @ arrays[f"{cell}/W_P_0"], -3, 3)
        outputs.append(m)
    return np.stack(outputs[::-1] if direction == 1 else outputs)


@pytest.fixture(scope="module")
def elmo_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("elmo")
    return folder, write_elmo(folder)


def test_three_layers_with_elmo_shapes(elmo_dir) -> None:
    backbone = load_backbone(f"elmo:{elmo_dir[0]}")
    batch = backbone.collate(
        [dict(zip(["input_ids", "attention_mask"], v, strict=True))
         for v in zip(*backbone.tokenize(["a good film", "bad"], None, 32).values(), strict=True)]
    )  # fmt: skip
    out = backbone(output_hidden_states=True, **batch)
    assert len(out.hidden_states) == 3 == backbone.num_blocks() + 1
    assert all(h.shape == (2, 5, 2 * PROJ) for h in out.hidden_states)  # <S> a good film </S>
    assert out.attention_mask.tolist() == [[0, 1, 1, 1, 0], [0, 1, 0, 0, 0]]  # words only, markers out
    again = backbone(output_hidden_states=True, **batch)
    assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, again.hidden_states, strict=True))


def test_every_layer_and_direction_matches_a_tensorflow_style_reference(elmo_dir) -> None:
    folder, arrays = elmo_dir
    backbone = load_backbone(f"elmo:{folder}").eval()
    encoded = backbone.tokenize(["The plot, alas, is thin!"], None, 32)
    batch = backbone.collate([{k: v[0] for k, v in encoded.items()}])
    with torch.no_grad():
        layers = backbone(output_hidden_states=True, **batch).hidden_states
    char_ids = np.array(encoded["input_ids"][0])
    tokens = reference_token_layer(arrays, char_ids)
    assert np.allclose(layers[0][0, :, :PROJ].numpy(), tokens, atol=1e-4)
    assert np.allclose(layers[0][0, :, PROJ:].numpy(), tokens, atol=1e-4)  # copied for both directions
    forward1, backward1 = reference_lstm(arrays, tokens, 0, 0), reference_lstm(arrays, tokens, 1, 0)
    assert np.allclose(layers[1][0, :, :PROJ].numpy(), forward1, atol=1e-4)
    assert np.allclose(layers[1][0, :, PROJ:].numpy(), backward1, atol=1e-4)
    # Layer 2 reads layer 1 of its own direction and adds it back (skip connection).
    forward2 = reference_lstm(arrays, forward1, 0, 1) + forward1
    assert np.allclose(layers[2][0, :, :PROJ].numpy(), forward2, atol=1e-4)


def test_character_ids_follow_elmo() -> None:
    ids = word_char_ids("ab")
    assert ids[:4] == [259, 98, 99, 260] and ids[4:] == [261] * 46  # BOW a b EOW, then padding
    assert word_char_ids(None, 256)[:3] == [259, 257, 260]  # <S>
    assert len(word_char_ids("x" * 80)) == 50


def test_a_folder_without_the_two_files_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"exactly one options \.json and one weights \.hdf5"):
        load_backbone(f"elmo:{tmp_path}")
    write_elmo(tmp_path)
    options = json.loads((tmp_path / "options.json").read_text())
    options["lstm"]["dim"] = 13
    (tmp_path / "options.json").write_text(json.dumps(options))
    with pytest.raises(ModelLoadError, match="not an ELMo weight file matching its options"):
        load_backbone(f"elmo:{tmp_path}")
