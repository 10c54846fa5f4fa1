"""The official folder layouts of KINS, COCOA-cls and D2SA under a data root ($AISDIFF_DATA), and the
categories their annotation files declare.

The dataset configs (`configs/_base_/datasets/amodal_*.py`) read these paths; `aisdiff demo-data --layout`
writes the synthetic benchmark into them (each of its seven shapes standing for one of the dataset's
categories, every official category declared as the real files declare it), so the real configs and
commands can be rehearsed offline before the real data is there.
"""
from __future__ import annotations

from dataclasses import dataclass

# The COCO 2014 categories as COCOA-cls declares them: (id, name, supercategory), ids with COCO's gaps.
COCO_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"), (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"),
    (9, "boat", "vehicle"), (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"),
    (20, "sheep", "animal"), (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"), (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"),
    (36, "snowboard", "sports"),
    (37, "sports ball", "sports"), (38, "kite", "sports"), (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"), (41, "skateboard", "sports"), (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"), (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"), (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"),
    (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"),
    (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"), (62, "chair", "furniture"),
    (63, "couch", "furniture"), (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
    (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
    (76, "keyboard", "electronic"), (77, "cell phone", "electronic"), (78, "microwave", "appliance"),
    (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"),
    (86, "vase", "indoor"),
    (87, "scissors", "indoor"), (88, "teddy bear", "indoor"), (89, "hair drier", "indoor"),
    (90, "toothbrush", "indoor"),
)

# KINS 2020 (update_{train,test}_2020.json) declares 8 categories; `rider` (3) has no instance in either file.
KINS2020_CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, "cyclist", "Living Thing"), (2, "pedestrian", "Living Thing"), (3, "rider", "Living Thing"),
    (4, "car", "vehicles"), (5, "tram", "vehicles"), (6, "truck", "vehicles"), (7, "van", "vehicles"),
    (8, "misc", "vehicles"),
)

# D2SA's 60 supermarket items, ids 1-60 in this order, with their supercategories.
D2SA_CATEGORIES: tuple[tuple[int, str, str], ...] = tuple((i, name, sup) for i, (name, sup) in enumerate((
    ("adelholzener_alpenquelle_classic_075", "water"), ("adelholzener_alpenquelle_naturell_075", "water"),
    ("adelholzener_classic_bio_apfelschorle_02", "apple spritzer"),
    ("adelholzener_classic_naturell_02", "water"),
    ("adelholzener_gourmet_mineralwasser_02", "blue glass"), ("augustiner_lagerbraeu_hell_05", "brown glass"),
    ("augustiner_weissbier_05", "brown glass"), ("coca_cola_05", "coca cola"),
    ("coca_cola_light_05", "coca cola"),
    ("suntory_gokuri_limonade", "canned soft drink"), ("tegernseer_hell_03", "brown glass"),
    ("corny_nussvoll", "packaged cereal bars"), ("corny_nussvoll_single", "textured packaging"),
    ("corny_schoko_banane", "packaged cereal bars"), ("corny_schoko_banane_single", "textured packaging"),
    ("dr_oetker_vitalis_knuspermuesli_klassisch", "cereals"), ("koelln_muesli_fruechte", "cereals"),
    ("koelln_muesli_schoko", "cereals"), ("caona_kakaohaltiges_getraenkepulver", "textured packaging"),
    ("cocoba_fruehstueckskakao_mit_honig", "textured packaging"),
    ("cafe_wunderbar_espresso", "textured packaging"),
    ("douwe_egberts_professional_kaffee_gemahlen", "textured packaging"),
    ("gepa_bio_caffe_crema", "textured packaging"), ("gepa_italienischer_bio_espresso", "textured packaging"),
    ("apple_braeburn_bundle", "cardboard tray"), ("apple_golden_delicious", "apples"),
    ("apple_granny_smith", "apples"), ("apple_roter_boskoop", "apples"), ("avocado", "avocados"),
    ("banana_bundle", "bananas"), ("banana_single", "bananas"), ("clementine", "nets"),
    ("clementine_single", "orange citrus"), ("grapes_green_sugraone_seedless", "plastic tray"),
    ("grapes_sweet_celebration_seedless", "plastic tray"), ("kiwi", "kiwis"),
    ("orange_single", "orange citrus"), ("oranges", "nets"), ("pear", "pears"),
    ("pasta_reggia_elicoidali", "pasta"), ("pasta_reggia_fusilli", "pasta"),
    ("pasta_reggia_spaghetti", "pasta"), ("franken_tafelreiniger", "board eraser"),
    ("pelikan_tintenpatrone_canon", "ink cartridge"), ("ethiquable_gruener_tee_ceylon", "tea"),
    ("gepa_bio_und_fair_fencheltee", "tea"), ("gepa_bio_und_fair_kamillentee", "tea"),
    ("gepa_bio_und_fair_kraeuterteemischung", "tea"), ("gepa_bio_und_fair_pfefferminztee", "tea"),
    ("gepa_bio_und_fair_rooibostee", "tea"), ("kilimanjaro_tea_earl_grey", "tea"), ("cucumber", "cucumbers"),
    ("carrot", "carrots"), ("feldsalat", "plastic tray"), ("lettuce", "salad"),
    ("rispentomaten", "cardboard tray"), ("roma_rispentomaten", "cardboard tray"), ("rucola", "plastic tray"),
    ("salad_iceberg", "foil"), ("zucchini", "zucchinis"),
), start=1))


@dataclass(frozen=True)
class SplitFiles:
    """Where one split of a dataset lives under the dataset's folder: its annotation file and image folder,
    and how its image files are named (a format string over `index` and `image_id`)."""

    annotations: str
    images: str
    file_name: str


@dataclass(frozen=True)
class DatasetLayout:
    """A dataset's folder under the data root, its annotation format, its splits (the synthetic benchmark's
    train and val split written as these) and its declared categories; `stands_for` maps each synthetic shape
    to the dataset category it is written as."""

    name: str
    folder: str
    format: str
    splits: dict[str, SplitFiles]
    categories: tuple[tuple[int, str, str], ...]
    stands_for: dict[str, str]

    def category_json(self) -> list[dict]:
        """The `categories` list as the official files declare it."""
        return [{"id": i, "name": name, "supercategory": sup} for i, name, sup in self.categories]

    def category_id(self, shape: str) -> int:
        """The id of the dataset category a synthetic shape is written as."""
        name = self.stands_for[shape]
        return next(i for i, n, _ in self.categories if n == name)


LAYOUTS: dict[str, DatasetLayout] = {
    "kins": DatasetLayout(
        "kins", "kins", "kins2020",
        {"train": SplitFiles("annotations/update_train_2020.json", "training/image_2", "{index:06d}.png"),
         "val": SplitFiles("annotations/update_test_2020.json", "testing/image_2", "{index:06d}.png")},
        KINS2020_CATEGORIES,
        {"ball": "cyclist", "box": "pedestrian", "triangle": "car", "star": "tram", "cross": "truck",
         "heart": "van", "moon": "misc"}),
    "cocoa-cls": DatasetLayout(
        "cocoa-cls", "cocoa", "cocoa",
        {"train": SplitFiles("annotations/COCO_amodal_train2014_with_classes.json", "train2014",
                             "COCO_train2014_{image_id:012d}.jpg"),
         "val": SplitFiles("annotations/COCO_amodal_val2014_with_classes.json", "val2014",
                           "COCO_val2014_{image_id:012d}.jpg")},
        COCO_CATEGORIES,
        {"ball": "sports ball", "box": "book", "triangle": "kite", "star": "clock", "cross": "tie",
         "heart": "teddy bear", "moon": "banana"}),
    "d2sa": DatasetLayout(
        "d2sa", "d2sa", "d2sa",
        {"train": SplitFiles("annotations/D2S_amodal_training_rot0.json", "images", "D2S_{image_id:06d}.jpg"),
         "val": SplitFiles("annotations/D2S_amodal_validation.json", "images", "D2S_{image_id:06d}.jpg")},
        D2SA_CATEGORIES,
        {"ball": "clementine_single", "box": "corny_nussvoll", "triangle": "avocado", "star": "kiwi",
         "cross": "franken_tafelreiniger", "heart": "apple_golden_delicious", "moon": "banana_single"}),
}
LAYOUT_NAMES = tuple(LAYOUTS)
