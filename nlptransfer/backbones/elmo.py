"""Original ELMo biLM weights (options JSON + HDF5) in pure PyTorch, with no allennlp.

``--model elmo:DIR``: a folder with the options ``.json`` and the weights
``.hdf5`` as published by AllenNLP. The model is the character CNN (max over
character positions, then the activation), highway layers, a projection, and an
L-layer bidirectional LSTM whose cells are clipped and projected. Its three
"layers" (for the default 2-layer biLM) are the token layer (the CNN output,
copied for both directions) and each biLSTM layer (forward and backward states
concatenated), exactly ELMo's layers 0, 1 and 2. ``--layers all`` learns ELMo's
scalar mix over them.

Weight conversion follows the TensorFlow layout: TF's LSTM gate order (i, j, f, o)
becomes (i, f, j, o), TF's implicit +1 forget-gate bias is added, and the
highway carry gate is negated so that one sigmoid gate serves both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nlptransfer.backbones.base import BACKBONES, Backbone, BackboneOutput, LayerGroup
from nlptransfer.backbones.word_vectors import tokenize_words
from nlptransfer.errors import ModelLoadError

MAX_CHARS = 50
BOS_CHAR, EOS_CHAR, BOW_CHAR, EOW_CHAR, PAD_CHAR = 256, 257, 258, 259, 260


def word_char_ids(word: str | None, sentence_mark: int | None = None) -> list[int]:
    """ELMo's character ids of a word (+1, so 0 means padding); ``sentence_mark`` for <S> / </S>."""
    ids = [PAD_CHAR] * MAX_CHARS
    ids[0] = BOW_CHAR
    encoded = (
        [sentence_mark]
        if sentence_mark is not None
        else list(word.encode("utf-8", "ignore"))[: MAX_CHARS - 2]
    )
    ids[1 : 1 + len(encoded)] = encoded
    ids[1 + len(encoded)] = EOW_CHAR
    return [c + 1 for c in ids]


class Highway(nn.Module):
    """x <- g * x + (1 - g) * relu(W_t x + b_t), with g = sigmoid of the second half."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, 2 * dim) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            nonlinear, gate = layer(x).chunk(2, dim=-1)
            gate = torch.sigmoid(gate)
            x = gate * x + (1 - gate) * torch.relu(nonlinear)
        return x


class CharCNNEncoder(nn.Module):
    """Characters of each token -> one vector per token (ELMo's layer 0)."""

    def __init__(self, options: dict[str, Any], projection_dim: int) -> None:
        super().__init__()
        cnn = options["char_cnn"]
        self.embedding = nn.Embedding(cnn["n_characters"], cnn["embedding"]["dim"], padding_idx=0)
        self.convs = nn.ModuleList(
            nn.Conv1d(cnn["embedding"]["dim"], num, width) for width, num in cnn["filters"]
        )
        self.activation = torch.tanh if cnn["activation"] == "tanh" else torch.relu
        filters = sum(num for _, num in cnn["filters"])
        self.highway = Highway(filters, cnn["n_highway"])
        self.projection = nn.Linear(filters, projection_dim)

    def forward(self, char_ids: torch.Tensor) -> torch.Tensor:
        batch, tokens, chars = char_ids.shape
        x = self.embedding(char_ids.view(-1, chars)).transpose(1, 2)
        convolved = [self.activation(conv(x).max(dim=-1).values) for conv in self.convs]
        out = self.projection(self.highway(torch.cat(convolved, dim=-1)))
        return out.view(batch, tokens, -1)


class LstmCellWithProjection(nn.Module):
    """One direction of one biLM layer: LSTM cell with clipping and a projected state."""

    def __init__(
        self, input_size: int, cell_size: int, projection_size: int, cell_clip: float, proj_clip: float
    ):
        super().__init__()
        self.cell_size, self.cell_clip, self.proj_clip = cell_size, cell_clip, proj_clip
        self.input_linearity = nn.Linear(input_size, 4 * cell_size, bias=False)
        self.state_linearity = nn.Linear(projection_size, 4 * cell_size, bias=True)
        self.state_projection = nn.Linear(cell_size, projection_size, bias=False)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor, reverse: bool) -> torch.Tensor:
        batch, steps, _ = inputs.shape
        c = self.cell_size
        memory = inputs.new_zeros(batch, c)
        state = inputs.new_zeros(batch, self.state_projection.out_features)
        outputs = inputs.new_zeros(batch, steps, state.shape[-1])
        projected_inputs = self.input_linearity(inputs)
        for t in reversed(range(steps)) if reverse else range(steps):
            gates = projected_inputs[:, t] + self.state_linearity(state)
            i, f, o = (torch.sigmoid(gates[:, k * c : (k + 1) * c]) for k in (0, 1, 3))
            new_memory = i * torch.tanh(gates[:, 2 * c : 3 * c]) + f * memory
            if self.cell_clip:
                new_memory = new_memory.clamp(-self.cell_clip, self.cell_clip)
            new_state = self.state_projection(o * torch.tanh(new_memory))
            if self.proj_clip:
                new_state = new_state.clamp(-self.proj_clip, self.proj_clip)
            keep = mask[:, t].unsqueeze(-1).bool()  # padding never updates the state
            memory, state = torch.where(keep, new_memory, memory), torch.where(keep, new_state, state)
            outputs[:, t] = new_state * keep
        return outputs


class BiLM(nn.Module):
    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__()
        lstm = options["lstm"]
        proj, cell = lstm["projection_dim"], lstm["dim"]
        self.skip = bool(lstm.get("use_skip_connections", False))
        clips = (lstm.get("cell_clip"), lstm.get("proj_clip"))
        self.forward_layers = nn.ModuleList(
            LstmCellWithProjection(proj, cell, proj, *clips) for _ in range(lstm["n_layers"])
        )
        self.backward_layers = nn.ModuleList(
            LstmCellWithProjection(proj, cell, proj, *clips) for _ in range(lstm["n_layers"])
        )

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        forward_seq = backward_seq = tokens
        layers = []
        for index, (fwd, bwd) in enumerate(zip(self.forward_layers, self.backward_layers, strict=True)):
            new_forward, new_backward = fwd(forward_seq, mask, False), bwd(backward_seq, mask, True)
            if self.skip and index > 0:
                new_forward, new_backward = new_forward + forward_seq, new_backward + backward_seq
            forward_seq, backward_seq = new_forward, new_backward
            layers.append(torch.cat([forward_seq, backward_seq], dim=-1))
        return layers


@BACKBONES.register("elmo")
class ElmoBackbone(Backbone):
    """ELMo's character CNN + biLM; its hidden states are ELMo's layers 0 .. n_layers."""

    registry_name = "elmo"

    def __init__(self, options: dict[str, Any], source: str = "") -> None:
        super().__init__()
        self.options, self.source = options, source
        projection = options["lstm"]["projection_dim"]
        self.char_cnn = CharCNNEncoder(options, projection)
        self.bilm = BiLM(options)
        self.hidden_size = 2 * projection

    @classmethod
    def from_files(cls, folder: str) -> ElmoBackbone:
        """Load ``elmo:DIR``: the folder holding the options .json and the weights .hdf5."""
        path = Path(folder).expanduser()
        options_files, weight_files = sorted(path.glob("*.json")), sorted(path.glob("*.hdf5"))
        if len(options_files) != 1 or len(weight_files) != 1:
            raise ModelLoadError(
                f"elmo:{folder} must be a folder with exactly one options .json and one weights .hdf5 "
                f"(found {len(options_files)} and {len(weight_files)})."
            )
        try:
            backbone = cls(json.loads(options_files[0].read_text()), source=f"elmo:{folder}")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ModelLoadError(f"{options_files[0]} is not a valid ELMo options file: {err!r}") from err
        try:
            load_hdf5_weights(backbone, weight_files[0])
        except (KeyError, OSError, ValueError) as err:
            raise ModelLoadError(
                f"{weight_files[0]} is not an ELMo weight file matching its options: {err}"
            ) from err
        return backbone

    def tokenize(
        self, texts: list[str], text_pairs: list[str] | None, max_length: int
    ) -> dict[str, list[list[int]]]:
        pairs = text_pairs or [""] * len(texts)
        rows = []
        for text, pair in zip(texts, pairs, strict=True):
            words = tokenize_words(f"{text} {pair}", lowercase=False)[: max(max_length - 2, 0)]
            rows.append(
                [word_char_ids(None, BOS_CHAR), *map(word_char_ids, words), word_char_ids(None, EOS_CHAR)]
            )
        return {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]}

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.zeros(len(features), width, MAX_CHARS, dtype=torch.long)
        for row, feature in enumerate(features):
            ids[row, : len(feature["input_ids"])] = torch.tensor(feature["input_ids"])
        return {"input_ids": ids, "attention_mask": (ids > 0).any(-1).long()}

    def forward(self, output_hidden_states: bool = False, **inputs: torch.Tensor) -> BackboneOutput:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        tokens = self.char_cnn(ids) * mask.unsqueeze(-1)
        layers = [torch.cat([tokens, tokens], dim=-1), *self.bilm(tokens, mask)]
        # Pool over words only: the sentence markers <S> and </S> are not part of the text.
        lengths = mask.sum(1)
        words = mask.clone()
        words[:, 0] = 0
        words[torch.arange(len(lengths)), lengths - 1] = 0
        words = torch.where(lengths.unsqueeze(1) > 2, words, mask)  # empty text: keep the markers
        return BackboneOutput(layers[-1], words, tuple(layers) if output_hidden_states else None)

    def layer_groups(self) -> list[LayerGroup]:
        groups = [LayerGroup("char_cnn", "embeddings", list(self.char_cnn.named_parameters("char_cnn")))]
        for i, (fwd, bwd) in enumerate(zip(self.bilm.forward_layers, self.bilm.backward_layers, strict=True)):
            params = list(fwd.named_parameters(f"bilm.forward_layers.{i}")) + list(
                bwd.named_parameters(f"bilm.backward_layers.{i}")
            )
            groups.append(LayerGroup(f"bilm.layer.{i}", "block", params))
        return groups

    def get_config(self) -> dict[str, Any]:
        return {"source": self.source}

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "elmo_options.json").write_text(json.dumps(self.options, indent=2))

    @classmethod
    def from_saved(cls, directory: Path, config: dict[str, Any]) -> ElmoBackbone:
        return cls(json.loads((directory / "elmo_options.json").read_text()), config.get("source", ""))


def _copy(param: torch.Tensor, value: np.ndarray) -> None:
    if tuple(param.shape) != value.shape:
        raise ValueError(f"expected shape {tuple(param.shape)}, the file has {value.shape}")
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def load_hdf5_weights(backbone: ElmoBackbone, file: Path) -> None:
    """Copy TensorFlow-layout ELMo weights into the PyTorch modules."""
    import h5py

    cnn, bilm = backbone.char_cnn, backbone.bilm
    with h5py.File(file, "r") as fin:
        chars = fin["char_embed"][...]
        _copy(cnn.embedding.weight, np.concatenate([np.zeros((1, chars.shape[1])), chars]))  # row 0: padding
        for i, conv in enumerate(cnn.convs):
            _copy(conv.weight, np.transpose(fin["CNN"][f"W_cnn_{i}"][...].squeeze(0), (2, 1, 0)))
            _copy(conv.bias, fin["CNN"][f"b_cnn_{i}"][...])
        for k, layer in enumerate(cnn.highway.layers):
            high = fin[f"CNN_high_{k}"]
            _copy(layer.weight, np.concatenate([high["W_transform"][...].T, -high["W_carry"][...].T]))
            _copy(layer.bias, np.concatenate([high["b_transform"][...], -high["b_carry"][...]]))
        _copy(cnn.projection.weight, fin["CNN_proj"]["W_proj"][...].T)
        _copy(cnn.projection.bias, fin["CNN_proj"]["b_proj"][...])
        for direction, cells in enumerate((bilm.forward_layers, bilm.backward_layers)):
            for layer, cell in enumerate(cells):
                data = fin[f"RNN_{direction}"]["RNN"]["MultiRNNCell"][f"Cell{layer}"]["LSTMCell"]
                _load_cell(cell, data["W_0"][...], data["B"][...], data["W_P_0"][...])


def _tf_to_torch_gates(array: np.ndarray, c: int) -> np.ndarray:
    """TensorFlow's gate order (i, j, f, o) -> (i, f, j, o) along the first axis."""
    return np.concatenate([array[:c], array[2 * c : 3 * c], array[c : 2 * c], array[3 * c :]])


def _load_cell(cell: LstmCellWithProjection, w: np.ndarray, b: np.ndarray, w_proj: np.ndarray) -> None:
    c, n_in = cell.cell_size, cell.input_linearity.in_features
    weights = _tf_to_torch_gates(w.T, c)  # (4c, input + projection)
    _copy(cell.input_linearity.weight, weights[:, :n_in])
    _copy(cell.state_linearity.weight, weights[:, n_in:])
    bias = b.copy()
    bias[2 * c : 3 * c] += 1.0  # TensorFlow adds 1 to the forget gate at run time
    _copy(cell.state_linearity.bias, _tf_to_torch_gates(bias, c))
    _copy(cell.state_projection.weight, w_proj.T)
