"""One million usage records generated in SQL (generate_series), for the benchmark and the plan test."""

from __future__ import annotations

RECORDS = 1_000_000
USERS = 10_000
DAYS = 90

# Actions cycle through generation outcomes, sign-ups, purchases, logins and uploads,
# spread evenly over the last 90 days and 10,000 users ("user-0" ... "user-9999").
GENERATE = f"""
    INSERT INTO usage_records
        (id, created_at, user_id, action, source, model, style, reason, tokens, processing_ms)
    SELECT gen_random_uuid(),
           now() - (i % ({DAYS} * 1440)) * interval '1 minute' - interval '1 second',
           'user-' || (i % {USERS}),
           (ARRAY['generation_started', 'generation_completed', 'generation_failed', 'signup',
                  'token_purchase', 'login', 'file_upload', 'generation_started'])[1 + i % 8],
           'bench',
           (ARRAY['stable-diffusion-xl', 'dall-e-3', 'midjourney'])[1 + i % 3],
           (ARRAY['realistic', 'studio', 'editorial', 'fashion'])[1 + i % 4],
           CASE WHEN i % 8 = 2 THEN 'PROVIDER_UNAVAILABLE' END,
           CASE WHEN i % 8 IN (1, 4) THEN 1 + i % 5 END,
           CASE WHEN i % 8 = 1 THEN 500 + i % 8000 END
    FROM generate_series(1, :records) AS i
"""
