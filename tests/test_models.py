"""Contract tests over every registered net and student, the C-GCN by hand, and weight
loading through the config path."""

import dataclasses
import math

import pytest
import torch
import torchvision
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vgg import VGG, make_layers

from factory.method import equations as eq
from factory.method import losses
from factory.method.weights import build_encoders, check_weights
from models.cgcn import CGCN, node_messages
from models.config import (
    AudioEncoderConfig,
    CGCNConfig,
    DilatedVGGConfig,
    EncodersConfig,
    ImageTrunkConfig,
)
from models.encoders import AudioEncoder, DilatedVGG, ImageTrunk
from models.registry import NETS, STUDENTS, EncodedNet, build_net, build_student

C = 5
SIZE = 64
SPEC_SHAPE = (1, 33, 26)


def raw_inputs(spec, batch, nodes=2):
    lead = (batch, 1 + nodes) if spec.graph else (batch,)
    g = torch.Generator().manual_seed(batch)
    return {
        "frames": torch.randn(*lead, spec.frames, 3, SIZE, SIZE, generator=g),
        "spectrogram": torch.randn(*lead, *SPEC_SHAPE, generator=g),
        "gate": torch.ones(*lead),
    }


@pytest.fixture(scope="module")
def encoders_cfg():
    return EncodersConfig.tiny()


@pytest.fixture(scope="module")
def encoders(encoders_cfg):
    return build_encoders(encoders_cfg)


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("batch", [1, 3])
def test_net_contract(name, batch, encoders, encoders_cfg):
    entry = NETS[name]
    torch.manual_seed(0)
    net = build_net(name, C, encoders_cfg, head_hidden=8)
    model = EncodedNet(encoders, net, entry.spec)
    model.train()
    logits = model(raw_inputs(entry.spec, batch))
    n_out = 1 if entry.spec.label == "switch" else C
    assert logits.shape == (batch, n_out)
    assert torch.isfinite(logits).all()
    if hasattr(net, "forward_features"):
        from models.registry import encode_for_spec

        maps = net.forward_features(
            encode_for_spec(encoders, entry.spec, raw_inputs(entry.spec, batch))
        )
        assert maps.dim() == 4 and maps.shape[:2] == (batch, n_out)
        cam = eq.class_activation_map(maps, torch.zeros(batch, dtype=torch.long))
        assert cam.shape == (batch, *maps.shape[-2:])
        assert torch.allclose(net.forward_head(maps), maps.mean(dim=(-2, -1)))
    target = torch.zeros_like(logits)
    target[:, 0] = 1
    losses.multilabel_soft_margin(logits, target).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0, f"{name}: {pname} got an all-zero gradient"
    for pname, p in encoders.named_parameters():
        assert not p.requires_grad and p.grad is None, (
            f"frozen encoder parameter {pname} got a gradient"
        )


@pytest.mark.parametrize("name", STUDENTS)
@pytest.mark.parametrize("batch", [1, 3])
def test_student_contract(name, batch, encoders, encoders_cfg):
    torch.manual_seed(0)
    student = build_student(name, encoders_cfg)
    g = torch.Generator().manual_seed(0)
    if name == "STA":
        frames = torch.randn(batch, 3, 3, SIZE, SIZE, generator=g)
        f = encoders.image(frames.flatten(0, 1))
        inputs = {
            "image": f["F5"].reshape(batch, 3, *f["F5"].shape[1:]),
            "F4": f["F4"].reshape(batch, 3, *f["F4"].shape[1:])[:, 1],
            "F3": f["F3"].reshape(batch, 3, *f["F3"].shape[1:])[:, 1],
            "audio": encoders.audio(torch.randn(batch, *SPEC_SHAPE, generator=g)),
            "gate": torch.ones(batch),
        }
        out = student(inputs, size=(32, 32))
        assert out.shape == (batch, 32, 32)
        loss = losses.bce_kl(out, torch.rand(batch, 32, 32, generator=g))
    else:
        frames = torch.randn(batch, 3, 3, 3, SIZE, SIZE, generator=g)
        p = encoders.plus(frames.flatten(0, 2))
        inputs = {
            "image": p.reshape(batch, 3, 3, *p.shape[1:]),
            "audio": encoders.audio(torch.randn(batch * 3, *SPEC_SHAPE, generator=g)).reshape(
                batch, 3, -1
            ),
            "gate": torch.ones(batch, 3),
        }
        out = student(inputs, size=(32, 32))
        assert out.shape == (batch, 3, 32, 32)
        loss = losses.node_sum_loss(
            list(out.unbind(1)), list(torch.rand(3, batch, 32, 32, generator=g))
        )
    assert torch.isfinite(out).all()
    loss.backward()
    for pname, p in student.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{name}: {pname} got an all-zero gradient"


@pytest.mark.parametrize("m,n", [(1, 1), (5, 1), (1, 4), (5, 4), (3, 2)])
@pytest.mark.parametrize("base", ["S+", "ST+", "SA+"])
def test_plus_nets_build_for_every_m_and_n(m, n, base, encoders, encoders_cfg):
    cgcn = CGCNConfig(steps=m, nodes=n, td=0.8, tr=0.6)
    net = build_net(base, C, encoders_cfg, head_hidden=8, cgcn=cgcn)
    model = EncodedNet(encoders, net, NETS[base].spec)
    with torch.no_grad():
        logits = model(raw_inputs(NETS[base].spec, 2, nodes=n))
    assert logits.shape == (2, C) and torch.isfinite(logits).all()
    assert len(net.cgcn.affinity_convs) == m


def test_plus_net_rejects_wrong_node_count(encoders, encoders_cfg):
    net = build_net("S+", C, encoders_cfg, cgcn=CGCNConfig(nodes=2))
    with pytest.raises(ValueError, match=r"1 \+ 2 nodes"), torch.no_grad():
        EncodedNet(encoders, net, NETS["S+"].spec)(raw_inputs(NETS["S+"].spec, 1, nodes=3))


def test_cgcn_messages_by_hand():
    # two nodes, one channel, two positions: h_a = [1, 0], h_b = [0, 2], keys = states
    states = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])
    msg = node_messages(states, states)
    # into a from b: F[p, q] = k_a[p] k_b[q] = [[0, 2], [0, 0]]; softmax over q per p
    e2 = math.exp(2)
    into_a = [2 * e2 / (1 + e2), 1.0]
    # into b from a: F[p, q] = k_b[p] k_a[q] = [[0, 0], [2, 0]]
    into_b = [0.5, e2 / (1 + e2)]
    assert torch.allclose(msg[0, 0, 0], torch.tensor(into_a), atol=1e-6)
    assert torch.allclose(msg[0, 1, 0], torch.tensor(into_b), atol=1e-6)


def test_cgcn_messages_equal_the_explicit_edge_matrices():
    # the fused attention kernel against Eq. 9-12 written out pair by pair
    torch.manual_seed(1)
    states, keys = torch.rand(2, 3, 4, 25), torch.randn(2, 3, 4, 25)
    expected = torch.zeros_like(states)
    for bi in range(2):
        for a in range(3):
            for b in range(3):
                if a != b:
                    edges = torch.softmax(keys[bi, a].T @ keys[bi, b], dim=-1)  # (p, q)
                    expected[bi, a] += (edges @ states[bi, b].T).T
    for fused in (False, True):  # the plain form, the attention kernel (the default)
        assert torch.allclose(node_messages(states, keys, fused), expected, atol=1e-5)
    # 8 channels (no padding): the kernel reads a strided input made contiguous
    states, keys = torch.rand(2, 3, 8, 25), torch.randn(2, 3, 8, 25)
    assert torch.allclose(
        node_messages(states, keys, True), node_messages(states, keys, False), atol=1e-5
    )


def test_cgcn_message_gradients_equal_the_plain_form_in_training():
    """In grad mode on a CPU the attention runs in float64 (models.cgcn.slow_cpu_backward):
    the messages stay float32 and they and their gradients equal the plain form's, on
    logits wide enough to reach float32's slow denormal range."""
    torch.manual_seed(2)
    states0, keys0 = torch.rand(2, 3, 12, 49), 3 * torch.randn(2, 3, 12, 49)
    grads = []
    for fused in (True, False):
        states, keys = states0.clone().requires_grad_(), keys0.clone().requires_grad_()
        msg = node_messages(states, keys, fused)
        assert msg.dtype == torch.float32
        (msg * torch.linspace(-1, 1, 49)).sum().backward()
        grads.append((msg.detach(), states.grad, keys.grad))
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_the_students_1x1_read_out_commutes_with_the_resize():
    from models.students import out_after_upsampling, upsample_to

    torch.manual_seed(3)
    out = torch.nn.Conv2d(32, 1, 1)
    x = torch.randn(4, 32, 11, 9)
    for size in ((44, 36), (128, 128), (11, 9)):
        assert torch.allclose(
            out_after_upsampling(out, x, size), out(upsample_to(x, size)), atol=1e-5
        )


def test_cgcn_one_step_equals_gate_then_refine():
    torch.manual_seed(0)
    g = CGCN(channels=3, cfg=CGCNConfig(steps=1, nodes=1, td=0.8, tr=0.6))
    nodes = torch.rand(2, 2, 3, 4, 4)
    keys = g.affinity_convs[0](nodes.flatten(0, 1)).reshape(2, 2, 3, 16)
    states = nodes.reshape(2, 2, 3, 16)
    expected = eq.fixation_refine(
        (states * torch.sigmoid(node_messages(states, keys))).reshape(2, 2, 3, 4, 4), 0.8, 0.6
    )
    assert torch.allclose(g(nodes), expected, atol=1e-6)


class TestWeightLoading:
    def test_image_trunk_from_torchvision_state_dict(self, tmp_path):
        torch.manual_seed(0)
        ref = ResNet(BasicBlock, [1, 1, 1, 1]).eval()
        path = tmp_path / "resnet10.pth"
        torch.save(ref.state_dict(), path)
        cfg = ImageTrunkConfig(
            block="basic",
            layers=(1, 1, 1, 1),
            widths=(64, 128, 256, 512),
            groups=1,
            width_per_group=64,
            weights=str(path),
        )
        enc = build_encoders(
            EncodersConfig(cfg, DilatedVGGConfig.tiny(), AudioEncoderConfig.tiny())
        )
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            y = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
            y = ref.layer4(ref.layer3(ref.layer2(ref.layer1(y))))
            assert torch.allclose(enc.image(x)["F5"], y, atol=1e-5)

    def test_dilated_vgg_from_torchvision_state_dict(self, tmp_path):
        torch.manual_seed(0)
        plan = [8, "M", 16, "M", 24, "M", 32, "M", 32, "M"]
        ref = VGG(make_layers(plan), num_classes=10, init_weights=True).eval()
        path = tmp_path / "vgg.pth"
        torch.save({"state_dict": ref.state_dict()}, path)
        cfg = DilatedVGGConfig(
            widths=(8, 16, 24, 32, 32), convs_per_stage=(1, 1, 1, 1, 1), weights=str(path)
        )
        enc = build_encoders(
            EncodersConfig(ImageTrunkConfig.tiny(), cfg, AudioEncoderConfig.tiny())
        )
        for k, v in ref.features.state_dict().items():
            assert torch.equal(enc.plus.features.state_dict()[k], v)
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            # up to and including pool3 (index 8) the two networks are the same function
            assert torch.allclose(enc.plus.features[:9](x), ref.features[:9](x), atol=1e-6)
            assert enc.plus(x).shape[-1] == 64 // 8

    def test_atrous_image_trunk_equals_torchvisions_dilated_resnet(self):
        """``output_stride=8`` is torchvision's ``replace_stride_with_dilation`` on the
        same weights (ResNet-50 layout, random init, nothing downloaded)."""
        torch.manual_seed(0)
        ref = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
        ref.eval()
        cfg = ImageTrunkConfig(
            layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), groups=1, width_per_group=64
        )
        ours = ImageTrunk(cfg).eval()
        ours.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})
        x = torch.randn(1, 3, 96, 96)
        with torch.no_grad():
            y = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
            f4 = ref.layer3(ref.layer2(ref.layer1(y)))
            out = ours(x, output_stride=8)
            assert torch.allclose(out["F4"], f4, atol=1e-5)
            assert torch.allclose(out["F5"], ref.layer4(f4), atol=1e-5)
            assert out["F5"].shape[-1] == 96 // 8
            assert ours(x)["F5"].shape[-1] == 96 // 32  # without it: the usual strides

    def test_plus_features_from_the_image_trunk(self):
        """``plus_trunk = image``: the + nets' features are the image trunk's F4 at stride
        8, with no weights of their own (nothing extra in the state dict)."""
        cfg = EncodersConfig.tiny()
        assert cfg.plus_trunk == "image" and cfg.plus_channels == cfg.image.channels["F4"]
        enc = build_encoders(cfg)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            plus = enc.plus(x)
            assert torch.equal(plus, enc.image(x, output_stride=8)["F4"])
        assert plus.shape == (2, cfg.plus_channels, 8, 8)
        assert not any(k.startswith("plus.") for k in enc.state_dict())
        vgg = build_encoders(dataclasses.replace(cfg, plus_trunk="vgg"))
        assert any(k.startswith("plus.") for k in vgg.state_dict())

    def test_plus_weights_without_a_vgg_are_an_error(self, tmp_path):
        path = tmp_path / "vgg.pth"
        torch.save({}, path)
        cfg = EncodersConfig.tiny()
        cfg = dataclasses.replace(cfg, plus=dataclasses.replace(cfg.plus, weights=str(path)))
        with pytest.raises(ValueError, match="plus_trunk"):
            check_weights(cfg)

    def test_paper_vgg16_keys_line_up_with_torchvision(self):
        ours = DilatedVGG(DilatedVGGConfig.paper()).state_dict()
        theirs = {
            k: v
            for k, v in torchvision.models.vgg16().state_dict().items()
            if k.startswith("features.")
        }
        assert ours.keys() == theirs.keys()
        assert all(ours[k].shape == theirs[k].shape for k in ours)

    def test_audio_encoder_remaps_vggsound_prefixes(self, tmp_path):
        torch.manual_seed(0)
        src = AudioEncoder(AudioEncoderConfig.tiny()).eval()
        state = {f"module.audnet.{k}": v for k, v in src.state_dict().items()}
        state["module.audnet.fc.weight"] = torch.zeros(3, 3)
        path = tmp_path / "vggsound.pt"
        torch.save(state, path)
        cfg = AudioEncoderConfig(**{**AudioEncoderConfig.tiny().__dict__, "weights": str(path)})
        enc = build_encoders(EncodersConfig(ImageTrunkConfig.tiny(), DilatedVGGConfig.tiny(), cfg))
        x = torch.randn(2, *SPEC_SHAPE)
        with torch.no_grad():
            assert torch.allclose(enc.audio(x), src(x), atol=1e-6)

    def test_wrong_architecture_gives_clear_error(self, tmp_path):
        path = tmp_path / "bad.pt"
        torch.save({"conv1.weight": torch.zeros(1)}, path)
        cfg = ImageTrunkConfig(**{**ImageTrunkConfig.tiny().__dict__, "weights": str(path)})
        with pytest.raises(ValueError, match="do not fit the configured architecture"):
            build_encoders(EncodersConfig(cfg, DilatedVGGConfig.tiny(), AudioEncoderConfig.tiny()))


def test_identity_init_makes_the_plus_layers_pass_through(encoders, encoders_cfg):
    # identity: the classifier returns the C-GCN's target node as it is, and Eq. 10's
    # keys are the class maps themselves; normal: both start ~0.01 x their input
    torch.manual_seed(0)
    net = build_net("S+", C, encoders_cfg, head_hidden=8, plus_init="identity")
    feats = EncodedNet(encoders, net, NETS["S+"].spec)
    raw = raw_inputs(NETS["S+"].spec, 2)
    with torch.no_grad():
        from models.registry import encode_for_spec

        inputs = encode_for_spec(encoders, NETS["S+"].spec, raw)
        graph = net.forward_graph(inputs)
        assert torch.allclose(net.forward_features(inputs), graph[:, 0], atol=1e-6)
        nodes = net.branch_maps(inputs).flatten(0, 1)
        assert torch.allclose(net.cgcn.affinity_convs[0](nodes), nodes, atol=1e-6)
    assert torch.isfinite(feats(raw)).all()
    authors = build_net("S+", C, encoders_cfg, head_hidden=8, plus_init="normal")
    w = authors.classifier.layers[-1].weight
    assert w.abs().mean() < 0.05 and not torch.allclose(w[..., 0, 0], torch.eye(C))
    with pytest.raises(ValueError, match="init 'zeros'"):
        build_net("S+", C, encoders_cfg, plus_init="zeros")


def test_plus_net_names_pair_and_type():
    from models.registry import PLUS_PAIRS, plus_net, plus_nets, split_term

    assert len(PLUS_PAIRS) == 8 and ("SA+", "short") not in PLUS_PAIRS
    assert plus_nets("pair") == (
        "S+short", "S+long", "S+cross", "ST+short", "ST+long", "ST+cross", "SA+long", "SA+cross"
    )  # fmt: skip
    assert plus_nets("type") == ("S+", "ST+", "SA+")
    assert plus_net("SA+", "cross") == "SA+cross" and plus_net("SA+", "cross", "type") == "SA+"
    assert split_term("ST+long") == ("ST+", "long") and split_term("ST+") == ("ST+", None)
    assert split_term("S") == ("S", None)
    with pytest.raises(ValueError, match="plus_weights"):
        plus_net("S+", "short", "shared")


def test_bilinear_switch_compares_picture_and_sound_by_hand(encoders_cfg):
    # the authors' switch: logit = out(relu(Bilinear(relu(E_i pool(image)), relu(E_a audio))))
    from models.classifiers import BilinearAudioSwitch

    net = build_net("switch", C, encoders_cfg, switch_arch="bilinear")
    assert isinstance(net, BilinearAudioSwitch)
    ci, ca = net.image_embed.in_features, net.audio_embed.in_features
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.image_embed.weight[0, 0] = 1.0  # embedding 0 of the picture: its channel 0
        net.audio_embed.weight[0, 0] = 1.0  # embedding 0 of the sound: its coordinate 0
        net.bilinear.weight[0, 0, 0] = 2.0  # joint 0 = 2 x picture_0 x sound_0
        net.out.weight[0, 0] = 1.0
        net.out.bias[0] = -1.0  # "on" only where 2 x p x s > 1
        image = torch.zeros(3, 1, ci, 2, 2)
        image[:, 0, 0] = torch.tensor([1.0, 1.0, 0.0])[:, None, None]  # pooled channel 0
        audio = torch.zeros(3, ca)
        audio[:, 0] = torch.tensor([1.0, 0.0, 1.0])
        logits = net({"image": image, "audio": audio})
    # both present: 2 x 1 x 1 - 1 = 1; sound missing / picture missing: relu(0) - 1 = -1
    assert torch.allclose(logits[:, 0], torch.tensor([1.0, -1.0, -1.0]))
    assert net.decide({"image": image, "audio": audio}).tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="switch_arch 'mlp'"):
        build_net("switch", C, encoders_cfg, switch_arch="mlp")


def test_preset_fields_and_knobs_are_set_by_name():
    from factory.config import customise, preset

    p = customise(preset("tiny"), overrides={"switch_arch": "bilinear", "epochs": 2})
    assert (p.switch_arch, p.train.epochs) == ("bilinear", 2)
    with pytest.raises(ValueError, match="switch_arch 'mlp'"):
        customise(preset("tiny"), overrides={"switch_arch": "mlp"})
    with pytest.raises(ValueError, match=r"or a preset field: .*switch_arch"):
        customise(preset("tiny"), overrides={"switcharch": "bilinear"})


def test_net_ids_parse_every_name_a_bundle_uses():
    from models.registry import NetId

    assert NetId.parse("ST+long") == NetId("ST+", "long", False, None)
    assert NetId.parse("SA_fine") == NetId("SA", None, True, None)
    assert NetId.parse("SA_fine").stage == "fine" and NetId.parse("S+").stage == "coarse"
    assert NetId.parse("audio@fold1") == NetId("audio", None, False, "fold1")
    assert NetId.parse("S+cross").term == "cross" and NetId.parse("S+").term is None
    for name in ("S", "ST_fine", "SA+cross", "ST+", "switch", "audio@fold0", "encoders"):
        assert str(NetId.parse(name)) == name
