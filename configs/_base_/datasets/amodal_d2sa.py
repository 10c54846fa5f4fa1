# D2SA under $AISDIFF_DATA/d2sa/: annotations/D2S_amodal_{training_rot0,validation}.json and images/.
# Classes: the file's categories (60 supermarket items) in id order. Pipelines and loaders as COCOA-cls.
_base_ = ['./amodal_cocoa-cls.py']
data_root = '{{$AISDIFF_DATA:data}}/d2sa/'
classes = ('adelholzener_alpenquelle_classic_075', 'adelholzener_alpenquelle_naturell_075',
           'adelholzener_classic_bio_apfelschorle_02', 'adelholzener_classic_naturell_02',
           'adelholzener_gourmet_mineralwasser_02', 'augustiner_lagerbraeu_hell_05', 'augustiner_weissbier_05',
           'coca_cola_05', 'coca_cola_light_05', 'suntory_gokuri_limonade', 'tegernseer_hell_03', 'corny_nussvoll',
           'corny_nussvoll_single', 'corny_schoko_banane', 'corny_schoko_banane_single',
           'dr_oetker_vitalis_knuspermuesli_klassisch', 'koelln_muesli_fruechte', 'koelln_muesli_schoko',
           'caona_kakaohaltiges_getraenkepulver', 'cocoba_fruehstueckskakao_mit_honig', 'cafe_wunderbar_espresso',
           'douwe_egberts_professional_kaffee_gemahlen', 'gepa_bio_caffe_crema', 'gepa_italienischer_bio_espresso',
           'apple_braeburn_bundle', 'apple_golden_delicious', 'apple_granny_smith', 'apple_roter_boskoop', 'avocado',
           'banana_bundle', 'banana_single', 'clementine', 'clementine_single', 'grapes_green_sugraone_seedless',
           'grapes_sweet_celebration_seedless', 'kiwi', 'orange_single', 'oranges', 'pear', 'pasta_reggia_elicoidali',
           'pasta_reggia_fusilli', 'pasta_reggia_spaghetti', 'franken_tafelreiniger', 'pelikan_tintenpatrone_canon',
           'ethiquable_gruener_tee_ceylon', 'gepa_bio_und_fair_fencheltee', 'gepa_bio_und_fair_kamillentee',
           'gepa_bio_und_fair_kraeuterteemischung', 'gepa_bio_und_fair_pfefferminztee', 'gepa_bio_und_fair_rooibostee',
           'kilimanjaro_tea_earl_grey', 'cucumber', 'carrot', 'feldsalat', 'lettuce', 'rispentomaten',
           'roma_rispentomaten', 'rucola', 'salad_iceberg', 'zucchini')
prior_store = data_root + 'priors/d2sa_train.zarr'
val_ann = data_root + 'annotations/D2S_amodal_validation.json'
train_dataloader = dict(dataset=dict(data_root=data_root, ann_file='annotations/D2S_amodal_training_rot0.json',
                                     data_prefix=dict(img='images/'), ann_format='d2sa', metainfo=dict(classes=classes),
                                     prior_store=prior_store))
val_dataloader = dict(dataset=dict(data_root=data_root, ann_file='annotations/D2S_amodal_validation.json',
                                   data_prefix=dict(img='images/'), ann_format='d2sa', metainfo=dict(classes=classes)))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=val_ann, ann_format='d2sa')
