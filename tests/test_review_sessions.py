"""Session tokens of the review app (medres.review.sessions): what makes one valid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from medres.review import ReviewStore, sessions, sign_ins


def test_a_token_signs_in_its_reviewer_until_idle_sign_out_or_tampering(tmp_path):
    users = ["dr_lee", "dr_okafor"]
    with ReviewStore(tmp_path / "review.db") as store:
        now = datetime.now(UTC)
        token = sessions.issue(store, "dr_lee", at=now)
        assert sessions.reviewer_of(store, token, users, at=now) == "dr_lee"
        # idle: valid just inside the limit, not after it
        almost = now + sessions.IDLE - timedelta(seconds=1)
        assert sessions.reviewer_of(store, token, users, at=almost) == "dr_lee"
        assert sessions.reviewer_of(store, token, users, at=now + sessions.IDLE) is None
        # another name, another signature, garbage, a removed reviewer: refused
        _, issued, signature = token.split(".")
        forged = f"{b'dr_okafor'.hex()}.{issued}.{signature}"
        assert sessions.reviewer_of(store, forged, users, at=now) is None
        flipped = token[:-1] + ("0" if token[-1] != "0" else "1")
        assert sessions.reviewer_of(store, flipped, users, at=now) is None
        assert sessions.reviewer_of(store, token[:-2] + "zz", users, at=now) is None
        for junk in ("", "a.b", "x.y.z", "..", token + ".1"):
            assert sessions.reviewer_of(store, junk, users, at=now) is None
        assert sessions.reviewer_of(store, token, ["dr_okafor"], at=now) is None
        # a key from another store does not sign this one's tokens
        with ReviewStore(tmp_path / "other.db") as other:
            assert sessions.reviewer_of(other, token, users, at=now) is None
            assert sessions.session_key(other) != sessions.session_key(store)
        # signing out ends every session of that name issued before it, not later ones
        other_token = sessions.issue(store, "dr_okafor", at=now)
        sign_ins.record(store, "dr_lee", "sign_out")
        later = datetime.now(UTC) + timedelta(seconds=1)
        assert sessions.reviewer_of(store, token, users, at=later) is None
        assert sessions.reviewer_of(store, other_token, users, at=later) == "dr_okafor"
        fresh = sessions.issue(store, "dr_lee", at=later)
        assert sessions.reviewer_of(store, fresh, users, at=later) == "dr_lee"
    # the key is kept in the store: a new process (a new ReviewStore) accepts the token
    with ReviewStore(tmp_path / "review.db") as again:
        assert sessions.reviewer_of(again, fresh, users, at=later) == "dr_lee"
