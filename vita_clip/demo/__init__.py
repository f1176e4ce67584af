"""The embedded default: a generated video dataset (:mod:`.dataset`) and a tiny CLIP pretrained
on its rendered frames (:mod:`.backbone`), so that ``make demo`` trains with no download."""
