-- Analysts' verdicts leave as labels on a path of their own
-- (docs/design/review.md, "Labels"): to the labels topic, or straight to the
-- feature store when the pipeline has no labels topic, whether or not it has
-- a resolutions topic.
ALTER TABLE resolutions ADD COLUMN label_sent_at timestamptz;

-- Until now the resolutions publisher sent a verdict's label before its
-- resolution: a published resolution's label went out already.
UPDATE resolutions SET label_sent_at = published_at WHERE published_at IS NOT NULL AND verdict IS NOT NULL;

-- Verdicts whose label is not sent yet (a deadline's resolution has no verdict).
CREATE INDEX resolutions_labels_unsent ON resolutions (seq) WHERE label_sent_at IS NULL AND verdict IS NOT NULL;
