"""T2T-ViT against a PyTorch model of the authors' modules, loaded through its state dict.

The PyTorch classes below follow the published description of the authors' `t2t_vit.py`,
`token_performer.py`, `token_transformer.py` and `transformer_block.py` (module and attribute
names included, so that their state dict has the reference file's keys); they are written for
this test, small and in evaluation mode.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from vit_jax.io import torch_state  # noqa: E402
from vit_jax.models import t2t  # noqa: E402


class RefMlp(nn.Module):
  def __init__(self, width, hidden):
    super().__init__()
    self.fc1, self.act, self.fc2 = nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)
    self.drop = nn.Dropout(0.0)

  def forward(self, x):
    return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class RefTokenPerformer(nn.Module):
  """Token_performer: linear attention through m = width / 2 positive random features."""

  def __init__(self, dim, in_dim):
    super().__init__()
    self.emb, self.m = in_dim, in_dim // 2
    self.kqv, self.proj = nn.Linear(dim, 3 * in_dim), nn.Linear(in_dim, in_dim)
    self.dp = nn.Dropout(0.1)
    self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(in_dim)
    self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, in_dim),
                             nn.Dropout(0.1))
    rows = nn.init.orthogonal_(torch.randn(self.m, in_dim)) * math.sqrt(self.m)
    self.w = nn.Parameter(rows, requires_grad=False)

  def phi(self, z):
    return torch.exp(z @ self.w.T - (z * z).sum(-1, keepdim=True) / 2) / math.sqrt(self.m)

  def forward(self, x):
    x = self.norm1(x)
    k, q, v = torch.split(self.kqv(x), self.emb, dim=-1)
    kp, qp = self.phi(k), self.phi(q)
    normaliser = (qp * kp.sum(dim=1, keepdim=True)).sum(-1, keepdim=True)
    y = qp @ (v.transpose(1, 2) @ kp).transpose(1, 2) / (normaliser + 1e-8)
    x = v + self.dp(self.proj(y))
    return x + self.mlp(self.norm2(x))


class RefTokenAttention(nn.Module):
  def __init__(self, dim, in_dim):
    super().__init__()
    self.in_dim, self.scale = in_dim, dim**-0.5  # one head: scaled by the input width
    self.qkv, self.proj = nn.Linear(dim, 3 * in_dim, bias=False), nn.Linear(in_dim, in_dim)

  def forward(self, x):
    q, k, v = torch.split(self.qkv(x), self.in_dim, dim=-1)
    weights = ((q * self.scale) @ k.transpose(1, 2)).softmax(-1)
    return v + self.proj(weights @ v)


class RefTokenTransformer(nn.Module):
  def __init__(self, dim, in_dim):
    super().__init__()
    self.norm1, self.attn = nn.LayerNorm(dim), RefTokenAttention(dim, in_dim)
    self.norm2, self.mlp = nn.LayerNorm(in_dim), RefMlp(in_dim, in_dim)

  def forward(self, x):
    x = self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class RefT2TModule(nn.Module):
  def __init__(self, layer, channels, token_dim, embed_dim, kernels, strides):
    super().__init__()
    for i, (k, s) in enumerate(zip(kernels, strides, strict=True)):
      setattr(self, f"soft_split{i}", nn.Unfold(k, stride=s, padding=(k - s + 1) // 2))
    cls = RefTokenPerformer if layer == "performer" else RefTokenTransformer
    self.attention1 = cls(channels * kernels[0] ** 2, token_dim)
    self.attention2 = cls(token_dim * kernels[1] ** 2, token_dim)
    self.project = nn.Linear(token_dim * kernels[2] ** 2, embed_dim)
    self.strides = strides

  def forward(self, x):
    side = x.shape[-1]
    for i, attention in enumerate((self.attention1, self.attention2)):
      side //= self.strides[i]
      x = attention(getattr(self, f"soft_split{i}")(x).transpose(1, 2))
      x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
    return self.project(self.soft_split2(x).transpose(1, 2))


class RefAttention(nn.Module):
  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)

  def forward(self, x):
    b, n, d = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
    return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class RefBlock(nn.Module):
  def __init__(self, dim, heads, hidden):
    super().__init__()
    self.norm1, self.attn = nn.LayerNorm(dim), RefAttention(dim, heads)
    self.norm2, self.mlp = nn.LayerNorm(dim), RefMlp(dim, hidden)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


def ref_sinusoid(positions, width):
  table = np.array([[pos / np.power(10000, 2 * (i // 2) / width) for i in range(width)]
                    for pos in range(positions)])
  table[:, 0::2], table[:, 1::2] = np.sin(table[:, 0::2]), np.cos(table[:, 1::2])
  return torch.FloatTensor(table)[None]


class RefT2TViT(nn.Module):
  def __init__(self, layer, image, kernels, strides, token_dim, embed_dim, depth, heads, hidden,
               classes):
    super().__init__()
    self.tokens_to_token = RefT2TModule(layer, 3, token_dim, embed_dim, kernels, strides)
    tokens = (image // math.prod(strides)) ** 2
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.pos_embed = nn.Parameter(ref_sinusoid(tokens + 1, embed_dim), requires_grad=False)
    self.blocks = nn.ModuleList(RefBlock(embed_dim, heads, hidden) for _ in range(depth))
    self.norm, self.head = nn.LayerNorm(embed_dim), nn.Linear(embed_dim, classes)

  def forward(self, images):
    x = self.tokens_to_token(images)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x)[:, 0])


def randomise(model, seed):
  """Every trained tensor redrawn at a trained network's scales; `w` and `pos_embed` kept."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in model.named_parameters():
      if not tensor.requires_grad:
        continue
      noise = torch.randn(tensor.shape, generator=gen)
      if tensor.ndim == 2:
        tensor.copy_(noise / math.sqrt(tensor.shape[1]))
      elif name.endswith("weight"):  # LayerNorm
        tensor.copy_(1 + 0.1 * noise)
      else:
        tensor.copy_((0.5 if name == "cls_token" else 0.1) * noise)


@pytest.mark.parametrize("layer,image,strides", [
    ("performer", 32, (4, 2, 2)), ("transformer", 32, (4, 2, 2)), ("performer", 28, (2, 2, 1))])
def test_logits_equal_the_reference_models(layer, image, strides):
  torch.manual_seed(0)
  sizes = dict(token_dim=16, embed_dim=32, depth=2, heads=4, hidden=64, classes=7)
  reference = RefT2TViT(layer, image, (7, 3, 3), strides, **sizes).eval()
  randomise(reference, seed=1)
  images = np.random.default_rng(2).uniform(-1, 1, (2, image, image, 3)).astype(np.float32)
  with torch.no_grad():
    want = reference(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()

  params = torch_state.to_flax({k: v.numpy() for k, v in reference.state_dict().items()})
  model = t2t.T2TViT(num_classes=7, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64,
                     token_dim=16, t2t_layer=layer, t2t_strides=strides)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image, image, 3)))
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, shapes["params"])
  got = np.asarray(jax.jit(model.apply)({"params": params}, images))
  assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
  assert np.abs(want).max() > 0.1  # the head is not degenerate
  # The table the model makes for itself is the reference's.
  np.testing.assert_allclose(t2t.sinusoid_table(*params["pos_embed"].shape[1:]).astype(np.float32),
                             params["pos_embed"], rtol=0, atol=1e-7)
