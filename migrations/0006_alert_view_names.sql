-- Alert rules name a view and one of its measures (processors/*_view.toml,
-- docs/views.md); `protocol` holds the view's name and `metric` the
-- measure's, each up to 64 characters as view files allow.
ALTER TABLE alerts
  MODIFY protocol VARCHAR(64) NOT NULL,
  MODIFY metric   VARCHAR(64) NOT NULL;
