"""The ConvLSTM video GAN of Zhang 2019 §V (SJSU CS297 report; docs/models.md, References):
noise + image -> ConvLSTM layers extend time -> 3D deconvs.

Zhang 2019 §V: G takes a noise vector and an image; five convolutional LSTM layers extend the
input to 16 frames; 3D transposed convolutions then upscale space to 128×128. D is a 3D-conv
network like §III's with five layers instead of four.

Filled gaps (the seed is silent): the image is encoded by stride-2 2D convs down to the
ConvLSTM resolution (``lstm_size``, 16 for 128×128), the noise is projected to a map of the
same size, and their concatenation is the ConvLSTM input at every time step (a repeated
input, as Keras's RepeatVector + ConvLSTM2D(return_sequences=True)); the hidden sequence of
the last layer is upscaled by ConvTranspose3d with stride (1, 2, 2), BN + ReLU, Tanh output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssagan_dist.models.registry import register
from ssagan_dist.models.video3d import VideoDiscriminator, log2_exact
from ssagan_dist.models.layers import (GlobalVelocity, check_output, compose_output, init_weights, output_channels,
                                       repeat_frame, zero_output_layer)


class ConvLSTMCell(nn.Module):
    """Shi et al. 2015 without peepholes: the four gates come from one conv over [x, h]."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(in_channels + hidden_channels, 4 * hidden_channels, kernel_size,
                               padding=kernel_size // 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras ConvLSTM2D's defaults (the report's framework): Glorot-uniform kernel, forget-gate bias 1."""
        nn.init.xavier_uniform_(self.gates.weight)
        nn.init.zeros_(self.gates.bias)
        nn.init.ones_(self.gates.bias[self.hidden_channels:2 * self.hidden_channels])

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        i, f, o, g = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ConvLSTM(nn.Module):
    """Stacked ConvLSTM cells unrolled for ``steps`` steps: (N, C, H, W) per step -> (N, hidden, T, H, W)."""

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int):
        super().__init__()
        self.cells = nn.ModuleList(
            ConvLSTMCell(in_channels if i == 0 else hidden_channels, hidden_channels) for i in range(num_layers))

    def forward(self, x: Tensor, steps: int) -> Tensor:
        """``x`` is the same input at every step (the conditioning map)."""
        n, _, height, width = x.shape
        states = [(x.new_zeros(n, cell.hidden_channels, height, width),) * 2 for cell in self.cells]
        outputs = []
        for _ in range(steps):
            h = x
            for i, cell in enumerate(self.cells):
                states[i] = cell(h, states[i])
                h = states[i][0]
            outputs.append(h)
        return torch.stack(outputs, dim=2)


class ConvLSTMGenerator(nn.Module):
    """(z (N, z_dim), image (N, C, size, size)) -> video (N, C, frames, size, size) in [-1, 1]."""

    conditioning = "image"

    def __init__(self, z_dim: int = 100, frames: int = 16, size: int = 128, channels: int = 3,
                 base_channels: int = 64, lstm_channels: int = 64, lstm_layers: int = 5, lstm_size: int = 16,
                 output: str = "direct"):
        super().__init__()
        self.z_dim, self.frames, self.size, self.channels = z_dim, frames, size, channels
        self.output = check_output(output)  # residual / flow: layers.compose_output on the repeated image
        if size % lstm_size:
            raise ValueError(f"size = {size} must be a multiple of lstm_size = {lstm_size}")
        n_scale = log2_exact(size // lstm_size, "size / lstm_size")
        if n_scale < 1:
            raise ValueError(f"lstm_size = {lstm_size} must be smaller than size = {size}")
        self.lstm_size = lstm_size
        widths = [base_channels * 2**i for i in range(n_scale)]  # encoder: size/2 ... lstm_size
        encoder: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip([channels, *widths], widths)):
            encoder.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=i == 0))
            if i > 0:
                encoder.append(nn.BatchNorm2d(c_out))
            encoder.append(nn.LeakyReLU(0.2, inplace=True))
        self.encode_image = nn.Sequential(*encoder)
        noise_channels = widths[-1]
        self.project_noise = nn.Sequential(
            nn.Linear(z_dim, noise_channels * lstm_size**2, bias=False),
            nn.Unflatten(1, (noise_channels, lstm_size, lstm_size)), nn.BatchNorm2d(noise_channels), nn.ReLU(True))
        self.lstm = ConvLSTM(widths[-1] + noise_channels, lstm_channels, lstm_layers)
        decoder: list[nn.Module] = []
        dec_widths = [lstm_channels, *widths[::-1][1:]]  # lstm, then mirror of the encoder
        for c_in, c_out in zip(dec_widths, dec_widths[1:]):
            decoder += [nn.ConvTranspose3d(c_in, c_out, (3, 4, 4), (1, 2, 2), 1, bias=False),
                        nn.BatchNorm3d(c_out), nn.ReLU(inplace=True)]
        decoder += [nn.ConvTranspose3d(dec_widths[-1], output_channels(self.output, channels), (3, 4, 4), (1, 2, 2), 1),
                    nn.Tanh()]
        self.decode = nn.Sequential(*decoder)
        # flow output: the clip's global velocity, pooled from every level of the image's encoding
        self.velocity = GlobalVelocity(widths) if self.output == "flow" else None

    def forward(self, z: Tensor, image: Tensor) -> Tensor:
        levels, encoded = [], image
        for layer in self.encode_image:
            encoded = layer(encoded)
            if isinstance(layer, nn.LeakyReLU):
                levels.append(encoded)
        velocity = self.velocity(levels) if self.velocity is not None else None
        out = self.decode(self.lstm(torch.cat([encoded, self.project_noise(z)], dim=1), self.frames))
        return compose_output(repeat_frame(image, self.frames), out, self.output, velocity)

    def start_unchanged(self) -> None:
        """Residual and flow outputs: zero the last deconv (and the velocity), so G starts by repeating its image."""
        if self.output != "direct":
            zero_output_layer(self.decode[-2])
        if self.velocity is not None:
            zero_output_layer(self.velocity.linear)

    def example_inputs(self, n: int = 1) -> tuple[Tensor, ...]:
        return torch.randn(n, self.z_dim), torch.rand(n, self.channels, self.size, self.size) * 2 - 1


@register(
    "convlstm_gan",
    family="noise",
    flavors={
        "paper": dict(z_dim=100, frames=16, size=128, channels=3, base_channels=64, lstm_channels=64,
                      lstm_layers=5, lstm_size=16, d_channels=64),
        "tiny": dict(z_dim=16, frames=8, size=32, channels=3, base_channels=8, lstm_channels=16,
                     lstm_layers=2, lstm_size=8, d_channels=8),
    },
    description="Zhang 2019 §V: noise + image -> 5 ConvLSTM layers over 16 frames -> 3D deconvs to 128x128; 5-layer 3D D",
)
def build_convlstm_gan(z_dim: int = 100, frames: int = 16, size: int = 128, channels: int = 3,
                       base_channels: int = 64, lstm_channels: int = 64, lstm_layers: int = 5, lstm_size: int = 16,
                       d_channels: int = 64, output: str = "direct") -> dict[str, nn.Module]:
    nets = {
        "G": ConvLSTMGenerator(z_dim, frames, size, channels, base_channels, lstm_channels, lstm_layers, lstm_size,
                               output),
        "D": VideoDiscriminator(frames, size, channels, [min(512, d_channels * 2**i) for i in range(5)]),
    }
    for net in nets.values():
        init_weights(net)
    for cell in nets["G"].lstm.cells:
        cell.reset_parameters()  # the LSTM gates keep their own init, not DCGAN's N(0, 0.02)
    nets["G"].start_unchanged()
    return nets
