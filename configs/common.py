"""Defaults every run starts from: data, optimizer, schedule, logging and checkpoints."""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from configs.models import model_config


def get_config() -> ml_collections.ConfigDict:
  """The shared defaults; run configs change what differs from them."""
  c = ml_collections.ConfigDict()
  # Data.
  # "bundled_mnist", "folder:/path" (/path/train/<class>/*, /path/test/<class>/*) or a
  # tensorflow-datasets name (read by random access: prepared as ArrayRecord).
  c.dataset = "bundled_mnist"
  c.data_dir = placeholder(str)  # tfds data_dir (default ~/tensorflow_datasets)
  c.manual_dir = placeholder(str)  # tfds manual_dir for datasets downloaded by hand
  c.download = True  # let tfds download and prepare a missing dataset
  c.train_split = placeholder(str)  # default: the dataset's training split (presets: minus
  c.eval_split = placeholder(str)  # a held-out minival, the default evaluation split)
  c.num_classes = placeholder(int)  # default: from the dataset
  c.image_size = 224
  c.image_channels = 3
  c.augment = "none"  # none | flip | shift | inception_crop | inception_crop_flip
  c.eval_resize_small = 0  # evaluation: 0 resizes the image; S resizes its shorter side to S
  #                          and keeps the central image_size crop
  c.bad_images = "skip"  # an unreadable image: "skip" it (logged, counted) or "stop" the run
  c.data_workers = 0  # threads preparing batches; 0: one per CPU core
  # Schedule.
  c.batch_size = 512  # global batch, over all devices and processes
  c.accum_steps = 1  # micro-batches per step (gradient accumulation)
  c.num_epochs = 1.0
  c.total_steps = placeholder(int)  # default: num_epochs over the training split
  c.seed = 0
  # Optimizer.
  c.optimizer = "adam"  # adam (decoupled weight decay) | sgd (momentum)
  c.lr = 1e-3
  c.warmup_steps = 0
  c.decay = "linear"  # linear | cosine | constant, after warm-up
  c.weight_decay = 0.0
  c.grad_clip_norm = 1.0  # global-norm clipping; 0 disables
  c.adam_b1 = 0.9
  c.adam_b2 = 0.999
  c.momentum = 0.9
  c.moment_dtype = "float32"  # float32 | bfloat16: Adam's first moment / SGD's momentum
  c.loss = "softmax_xent"  # softmax_xent | sigmoid_xent
  # Training targets (evaluation keeps the plain loss), as DeiT trains: label smoothing
  # (targets one_hot * (1 - ls) + ls / num_classes, for either loss), then mixup / CutMix of the
  # whole batch on the device (timm's batch mode: one lambda per batch, each image mixed with
  # the batch reversed; vit_jax/train/mix.py).
  c.label_smoothing = 0.0  # in [0, 1); DeiT: 0.1
  c.mixup_alpha = 0.0  # Beta(alpha, alpha) of mixup's lambda; 0: no mixup (DeiT: 0.8)
  c.cutmix_alpha = 0.0  # Beta(alpha, alpha) of CutMix's lambda; 0: no CutMix (DeiT: 1.0)
  c.mix_prob = 1.0  # probability that a batch is mixed at all
  c.mix_switch_prob = 0.5  # probability of CutMix rather than mixup when both alphas are > 0
  # A non-finite loss or gradient norm: "stop" the run (the last checkpoint stays) or "skip"
  # the update and count it.
  c.nonfinite = "stop"
  # Few-shot linear evaluation of the frozen features, run with every evaluation.
  c.fewshot = ml_collections.ConfigDict()
  c.fewshot.shots = ()  # k values, e.g. (1, 5, 10); empty: off
  c.fewshot.draws = 5  # random draws of the k examples per class, averaged
  c.fewshot.pool = 2000  # training examples the k-shot sets are drawn from
  c.fewshot.l2 = 1.0  # ridge regularisation
  # Starting from another run (fine-tuning, resolution change).
  c.init_from = ""  # a run directory whose newest checkpoint gives the initial parameters
  c.posemb_resample = "bilinear"  # bilinear | bicubic, when the patch grid changes
  c.reset_head = False  # True: a fresh zero head even where init_from's head would fit
  # Devices: the batch is split over data x fsdp; big state tensors are split over fsdp.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all devices not used by fsdp
  c.mesh.fsdp = 1
  c.mesh.fsdp_min_size = 2**14  # tensors with fewer elements stay replicated
  c.infer_chunk = 0  # images per forward pass and device in evaluation and few-shot; 0: auto
  #                    (a CPU: as many as fit its cache; a GPU or TPU: the whole batch)
  c.train_chains = 0  # independent parts per micro-batch and device, their gradients summed;
  #                     0: auto (a CPU: parts of half an inference pass, at least 4 images;
  #                     a GPU or TPU: 1)
  c.host_memory = "auto"  # auto | retain | release: keep freed host memory mapped (glibc), so a
  #                        CPU step's buffers are not page-faulted in again; auto: when on a CPU
  c.cpu_matmul = "auto"  # auto | onednn | xla: a CPU's products (vit_jax/train/cpu_matmul.py)
  #                       where the jaxlib has it (jax >= 0.12); auto: on Intel CPUs, not Mixers
  # Logging and checkpoints.
  c.log_every = 50
  c.eval_every = 1000  # 0: only at the end
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.model = model_config("ViT-B/16")
  return c
