import open_clip
import torch

from traffic_retrieval.data.images import PreprocessConfig, to_square
from traffic_retrieval.io import atomic_torch_save
from traffic_retrieval.model.factory import MODEL_CONFIG_DIR, checkpoint_payload, create_model, encode_text, load_checkpoint


def test_trimmed_text_encoding_matches_open_clip():
    loaded = create_model("TR-Tiny-RN")
    tokens = loaded.tokenizer(["This is a white Audi.", "A walking woman who is between 18 and 60 years old, with a backpack."])
    loaded.model.eval()
    with torch.no_grad():
        assert torch.allclose(encode_text(loaded.model, tokens), loaded.model.encode_text(tokens, normalize=True), atol=1e-5)


def test_checkpoint_is_self_describing_and_loads_in_plain_open_clip(tmp_path):
    torch.manual_seed(0)
    loaded = create_model("TR-Tiny-RN")
    loaded.preprocess.resize_mode = "squash"
    path = tmp_path / "final.pt"
    atomic_torch_save(checkpoint_payload(loaded, {"epoch": 3}), path)

    again = load_checkpoint(path)
    assert again.model_name == "TR-Tiny-RN" and again.preprocess.resize_mode == "squash" and again.checkpoint["epoch"] == 3
    image = torch.zeros(1, 3, 80, 80)
    with torch.no_grad():
        assert torch.allclose(again.model.encode_image(image), loaded.model.eval().encode_image(image))

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    plain, _, preprocess = open_clip.create_model_and_transforms("TR-Tiny-RN", pretrained=str(path))
    with torch.no_grad():
        assert torch.allclose(plain.encode_image(image), again.model.encode_image(image))


def test_square_modes_on_wide_and_tall_images():
    from PIL import Image

    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    tall = Image.new("RGB", (40, 120), (0, 255, 0))
    for image in (wide, tall):
        for mode in ("pad", "squash", "crop"):
            assert to_square(image, 64, mode).size == (64, 64)
    padded = to_square(wide, 64, "pad")
    assert padded.getpixel((32, 2)) == (0, 0, 0) and padded.getpixel((32, 32))[0] > 200  # black bars above and below
    padded_tall = to_square(tall, 60, "pad")
    assert padded_tall.getpixel((2, 30)) == (0, 0, 0) and padded_tall.getpixel((30, 30))[1] > 200
    assert to_square(wide, 64, "squash").getpixel((32, 2))[0] > 200  # no bars
    assert PreprocessConfig(size=64).resize_mode == "longest" == PreprocessConfig(size=64, resize_mode="pad").resize_mode
