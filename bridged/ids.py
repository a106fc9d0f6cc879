"""What an id bridged is given from outside may be: a manager's (the config, a signed link, the API), an
order's (a signed link, the API), a call's or a canary's (the API).

1 to 64 letters, digits, '.', '_' or '-': nothing a URL, a log line or a dialplan variable has to escape,
and one set of characters everywhere, so that a manager id the config takes is one a link and the API
take too. Call ids are 32 hex digits today; older rows and tests use other short ids of these characters.
"""

from __future__ import annotations

import re

# No anchors: every use is a fullmatch.
ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
