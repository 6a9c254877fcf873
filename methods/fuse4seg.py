"""Fuse4Seg: a fusion leader trained through a segmentation follower by bi-level optimisation.

Leader (paper 3.3): shared Restormer encoder, Lite-Transformer low-frequency and INN high-frequency
branches, a learnable fusion unit and a transformer decoder to one channel, min-max normalised
(``methods/_fuse4seg_leader.py``). Follower (3.4): the shared ConvNeXt U-Net with an attention bottleneck
(``benchmark/nn/convnext_unet.py``), built by the framework for every pipeline. Training (3.2): follower warm-up
on the average prior, then K follower steps on D_tr and one leader step on D_val per batch, EMA leader at
evaluation (``benchmark/training/bilevel.py``, the default recipe of joint methods).

Loss weights: the paper's values of lambda_1..3 were lost from its text; ours (w_dec = 2, w_grad = 10,
w_mse = 10, w_seg = 1) are configurable. w_dec and w_grad follow CDDFuse's balance. The anchor needs the
same weight as the gradient term: with w_mse = 1, 84 leader steps on the synthetic BraTS phantoms drifted
to an inverted edge map (MSE 0.50 to the average prior), with w_mse = 10 to MSE 0.007.

Leader initialisation: the paper freezes the leader during the follower warm-up but does not say how it
is initialised. A random leader emits noise that the warmed-up follower cannot read, so the engine first
trains the leader on the physical losses alone for ``training.fusion_epochs`` (0 disables this).
The MSE anchor pulls the fused image towards the average prior (A + B) / 2, which is the same as anchoring
to both sources: MSE(F, A) + MSE(F, B) = 2 MSE(F, (A + B) / 2) + a constant.

Table 3 ablations are hyper-parameter overrides of this one file: ``baseline`` trains the leader with the
physical losses alone and then the follower on its frozen output (a disjoint pipeline); ``variant_a`` adds
bi-level training without the decomposition and gradient losses; ``variant_b`` adds the decomposition loss.
"""

from benchmark.methods import JointMethod
from benchmark.training.losses import anchor_loss, decomposition_loss, gradient_loss


class Method(JointMethod):
    kind = "joint"
    display_name = "Fuse4Seg"
    paper_name = "Fuse4Seg (Ours)"
    datasets = ("brats", "paired")
    hyperparameters = {
        "dim": 64,
        "heads": 8,
        "encoder_blocks": 4,
        "decoder_blocks": 4,
        "inn_nodes": 3,
        "fusion_inn_nodes": 1,
        "inn_haar": False,
        "bilevel": True,
        "w_seg": 1.0,
        "w_dec": 2.0,
        "w_grad": 10.0,
        "w_mse": 10.0,
    }
    test_config = {"dim": 8, "heads": 2, "encoder_blocks": 1, "decoder_blocks": 1, "inn_nodes": 1}
    full_label = "Ours (Full)"
    reference = {
        "repository": "https://github.com/Zhaozixiang1228/MMIF-CDDFuse",
        "commit": "fd8da1f",
        "parameters": 1188272,
        "notes": "no official Fuse4Seg code; the leader is CDDFuse's network (+1.2%: invertible LU 1x1 mixing in "
                 "the INN, depthwise Lite-Transformer MLP conv; see methods/_fuse4seg_leader.py)",
    }
    ablations = {
        "baseline": {"label": "Baseline (Disjoint)", "order": 0, "overrides": {"bilevel": False}},
        "variant_a": {"label": "Variant A", "order": 1, "overrides": {"w_dec": 0.0, "w_grad": 0.0}},
        "variant_b": {"label": "Variant B", "order": 2, "overrides": {"w_grad": 0.0}},
    }

    def build_leader(self):
        from methods._fuse4seg_leader import FusionLeader

        h = self.hparams
        return FusionLeader(
            dim=h["dim"],
            heads=h["heads"],
            encoder_blocks=h["encoder_blocks"],
            decoder_blocks=h["decoder_blocks"],
            inn_nodes=h["inn_nodes"],
            fusion_inn_nodes=h["fusion_inn_nodes"],
            inn_haar=h["inn_haar"],
        )

    def physical_loss(self, out, a, b):
        h = self.hparams
        dec = decomposition_loss(out.low_a, out.low_b, out.high_a, out.high_b)
        grad = gradient_loss(out.fused, a, b)
        mse = anchor_loss(out.fused, a, b)
        total = h["w_dec"] * dec + h["w_grad"] * grad + h["w_mse"] * mse
        return total, {"dec": dec.item(), "grad": grad.item(), "mse": mse.item()}
