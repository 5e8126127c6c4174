"""The ``python`` PTB tokenizer: Stanford CoreNLP 3.4.1's PTBLexer (inside pycocoevalcap 1.2) re-implemented in Python.

The Java lexer is a JFlex scanner: at each position every rule is tried, the longest match wins (a rule's trailing
context ``r1/r2`` counts in its length, then ``r2`` is given back), a tie goes to the earlier rule, and the rule's
action turns the text into a token (``(`` -> ``-LRB-``, an em dash -> ``--``, ``½`` -> ``1/2``, ``'tis`` -> ``'t`` +
``is``...). The scanner is ``%caseless``: a literal letter matches either case, a character class does not (``[A]z``
matches "Az" and "AZ", not "az"). We run the same rules, in the same order, with the same options as pycocoevalcap's
command line (PTB3 escaping, ``-preserveLines``, then ``-lowerCase`` with Java's English lower-casing). The rules
were written from the lexer's specification (``PTBLexer.flex`` at CoreNLP tag v3.4.1); ``tests/test_ptb.py`` checks
the result against the jar itself.

Like the Java tokenizer, ``lex_lines`` reads all lines as one text: a rule may look past the end of a line into the
next one (e.g. "I." before a line starting "The ..."), so tokenize captions in the same batches and order as the
reference run to be exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import regex

NEWLINE_TOKEN = "*NL*"


def _ci(pattern: str) -> str:
    """JFlex ``%caseless`` for a pattern: every literal ASCII letter outside a character class matches both cases;
    classes, escapes (``\\u00A0``, ``\\x7f``, ``\\p{L}``) and repetition counts are left alone."""
    out, i, depth = [], 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            end = i + 2
            if pattern[i + 1] in "ux":
                end = i + (6 if pattern[i + 1] == "u" else 4)
            elif pattern[i + 1] in "pP":
                end = pattern.index("}", i) + 1
            out.append(pattern[i:end])
            i = end
            continue
        if c == "[":
            depth += 1
        elif c == "]" and depth:
            depth -= 1
        elif c == "{" and not depth and regex.match(r"\{\d+(,\d*)?\}", pattern[i:]):
            end = pattern.index("}", i) + 1
            out.append(pattern[i:end])
            i = end
            continue
        elif c == "(" and pattern.startswith("(?", i):  # our own group syntax: (?: (?P<name>
            end = pattern.index(">", i) + 1 if pattern.startswith("(?P<", i) else i + 3
            out.append(pattern[i:end])
            i = end
            continue
        out.append(f"[{c.lower()}{c.upper()}]" if not depth and c.isascii() and c.isalpha() else c)
        i += 1
    return "".join(out)


# -- the lexer's macros, in its own order (each a pattern, caseless where the lexer is) --------------------------
M: dict[str, str] = {}


def _macro(name: str, pattern: str) -> None:
    M[name] = "(?:" + _ci(pattern.format(**M)) + ")"


_macro("SGML", r"""<(?:[!?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*|"""
               r"""[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*(?:'[^']*'|"[^"]*")))*[ ]*/?|/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>""")
_macro("SPMDASH", r"&(?:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]")
_macro("SPAMP", r"&amp;")
_macro("SPPUNC", r"&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);")
_macro("SPLET", r"&[aeiouAEIOU](?:acute|grave|uml);")
_macro("SPACE", r"[ \t\u00A0\u2000-\u200A\u3000]")
_macro("SPACES", r"{SPACE}+")
_macro("NEWLINE", r"\r|\r?\n|\u2028|\u2029|\u000B|\u000C|\u0085")
_macro("SPACENL", r"{SPACE}|{NEWLINE}")
_macro("SPACENLS", r"{SPACENL}+")
_macro("SENTEND", r"{SPACENL}(?:{SPACENL}|\p{{Lu}}|{SGML})")
_macro("DIGIT", r"[\p{{Nd}}\u07C0-\u07C9]")
_macro("DATE", r"{DIGIT}{{1,2}}[\-/]{DIGIT}{{1,2}}[\-/]{DIGIT}{{2,4}}")
_macro("NUM", r"{DIGIT}+|{DIGIT}*(?:[.:,\u00AD\u066B\u066C]{DIGIT}+)+")
_macro("NUMBER", r"[\-+]?{NUM}")
_macro("SUBSUPNUM", r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)")
_macro("FRAC", r"(?:{DIGIT}{{1,4}}[- \u00A0])?{DIGIT}{{1,4}}(?:\\?/|\u2044){DIGIT}{{1,4}}")
_macro("FRAC2", r"[\u00BC\u00BD\u00BE\u2153-\u215E]")
_macro("DOLSIGN", r"[A-Z]*\$|#")
_macro("DOLSIGN2", r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]")
# [:letter:] plus marks and modifiers the lexer counts as letters
_macro("LETTER", r"\p{{L}}|{SPLET}|[\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F"
                 r"\u0370-\u037D\u0384\u0385\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525"
                 r"\u055A-\u055F\u0591-\u05BD\u05BF\u05C1\u05C2\u05C4\u05C5\u05C7\u0615-\u061A\u063B-\u063F"
                 r"\u064B-\u065E\u0670\u06D6-\u06EF\u06FA-\u06FF\u070F\u0711\u0730-\u074F\u0750-\u077F\u07A6-\u07B1"
                 r"\u07CA-\u07F5\u07FA\u0900-\u0903\u093C\u093E-\u094E\u0951-\u0955\u0962-\u0963\u0981-\u0983"
                 r"\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F"
                 r"\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2\u0BC6-\u0BC8\u0BCA-\u0BCD\u0C01-\u0C03"
                 r"\u0C3E-\u0C56\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD]")
_macro("WORD", r"{LETTER}(?:{LETTER}|{DIGIT})*(?:[.!?]{LETTER}(?:{LETTER}|{DIGIT})*)*")
_macro("FILENAME_EXT", r"bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|"
                       r"php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip")
_macro("FILENAME", r"(?:{LETTER}|{DIGIT})+(?:[.](?:{LETTER}|{DIGIT})+)*(?:[.]{FILENAME_EXT})")
_macro("APOS", r"['\u0092\u2019]|&apos;")
_macro("APOSETCETERA", r"{APOS}|[`\u0091\u2018\u201B]")
_macro("HYPHEN", r"[-_\u058A\u2010\u2011]")
_macro("THING", r"(?:[dDoOlL]{APOSETCETERA}[\p{{L}}\p{{Nd}}])?[\p{{L}}\p{{Nd}}]+"
                r"(?:{HYPHEN}(?:[dDoOlL]{APOSETCETERA}[\p{{L}}\p{{Nd}}])?[\p{{L}}\p{{Nd}}]+)*")
_macro("THINGA", r"[A-Z]+(?:(?:[+&]|{SPAMP})[A-Z]+)+")
_macro("THING3", r"[A-Za-z0-9]+(?:-[A-Za-z]+){{0,2}}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){{0,2}}){{1,2}}")
_macro("ACRO", r"[A-Za-z](?:\.[A-Za-z])*|(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(?:U\.K|U\.S\.S\.R)")
_macro("ACRO2", r"[A-Za-z](?:\.[A-Za-z])+|(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(?:U\.K|U\.S\.S\.R)")
_macro("HTHING", r"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|{ACRO2}\.))+")
_macro("REDAUX", r"{APOS}(?:[msdMSD]|re|ve|ll)")
_macro("SWORD", r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*")
_macro("SREDAUX", r"n{APOSETCETERA}t")
_macro("APOWORD", r"{APOS}n{APOS}?|[lLdDjJ]{APOS}|Dunkin{APOS}|somethin{APOS}|ol{APOS}|{APOS}em|"
                  r"[A-HJ-XZn]{APOSETCETERA}\p{{L}}{{2}}\p{{L}}*|{APOS}[2-9]0s|{APOS}till?|"
                  r"\p{{L}}\p{{L}}*[aeiouyAEIOUY]{APOSETCETERA}[aeiouA-Z]\p{{L}}*|{APOS}cause|cont'd\.?|'twas|"
                  r"nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l|O{APOSETCETERA}o")
_macro("APOWORD2", r"y{APOS}")
_macro("FULLURL", r"""https?://[^ \t\n\f\r"<>|(){{}}]+[^ \t\n\f\r"<>|.!?(){{}},-]""")
# ",-_" in the second class is a range (0x2C-0x5F: digits and capitals too), as in the lexer
_macro("LIKELYURL", r"""(?:www\.(?:[^ \t\n\f\r"<>|.!?(){{}},]+\.)+[a-zA-Z]{{2,4}}|"""
                    r"""(?:[^ \t\n\f\r"`'<>|.!?(){{}},-_$]+\.)+"""
                    r"""(?:com|net|org|edu))(?:/[^ \t\n\f\r"<>|()]+[^ \t\n\f\r"<>|.!?(){{}},-])?""")
_macro("EMAIL", r"""(?:&lt;|<)?[a-zA-Z0-9][^ \t\n\f\r"<>|()\u00A0{{}}]*@(?:[^ \t\n\f\r"<>|(){{}}.\u00A0]+\.)*"""
                r"""[^ \t\n\f\r"<>|(){{}}.\u00A0]+(?:&gt;|>)?""")
_macro("TWITTER", r"@[a-zA-Z_][a-zA-Z_0-9]*|#{LETTER}+")
_macro("ABMONTH", r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec")
_macro("ABDAYS", r"Mon|Tue|Tues|Wed|Thu|Thurs|Fri")
_macro("ABSTATE", r"Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kans?|Ky|[L]a|[M]ass|Md|Mich|"
                  r"Minn|[M]iss|Mo|Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wisc?|Wyo")
_macro("ABCOMP", r"Inc|Cos?|Corp|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys")
_macro("ABNUM", r"tel|est|ext|sq")
_macro("ABPTIT", r"Jr|Sr|Bros|(?:Ed|Ph)\.D|Blvd|Rd|Esq")
_macro("ABBREV1", r"(?:{ABMONTH}|{ABDAYS}|{ABSTATE}|{ABCOMP}|{ABNUM}|{ABPTIT}|etc|al|seq|Bldg)\.")
_macro("ABTITLE", r"Mr|Mrs|Ms|[M]iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|"
                  r"Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|"
                  r"Mlle|Mme|Msgr|Sfc")
_macro("ABCOMP2", r"Invt|Elec|Natl|M[ft]g|Dept")
_macro("ABBREV4", r"{ABTITLE}|vs|Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS|Ph|{ACRO}|{ABCOMP2}")
_macro("ABBREV2", r"(?:{ABBREV4})\.")
_macro("ACRONYM", r"(?:{ACRO})\.")
_macro("ABBREV3", r"(?:ca|figs?|prop|nos?|art|bldg|prop|pp|op)\.")
_macro("PHONE", r"(?:\([0-9]{{2,3}}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{{2,4}}[\- \u00A0])?[0-9]{{2,4}}[\- \u00A0])"
                r"[0-9]{{3,4}}[\- \u00A0]?[0-9]{{3,5}}|"
                r"(?:(?:\+\+?)?[0-9]{{2,4}}\.)?[0-9]{{2,4}}\.[0-9]{{3,4}}\.[0-9]{{3,5}}")
_macro("LDOTS", r"\.{{3,5}}|(?:\.[ \u00A0]){{2,4}}\.|[\u0085\u2026]")
_macro("INSENTP", r"[,;:\u3001]")
_macro("QUOTES", r"{APOS}|''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A"
                 r"\u00AB\u00BB]{{1,2}}")
_macro("DBLQUOT", r'"|&quot;')
_macro("TBSPEC", r"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls|Cap{APOS}n|"
                 r"c{APOS}est")
_macro("TBSPEC2", r"{APOS}[0-9][0-9]")
_macro("SMILEY", r"[<>]?[:;=][\-o*']?[()DPdpO\\{{@|\[\]]")
_macro("ASIANSMILEY", r"[\^x=~<>]\.\[\^x=~<>\]|[\-\^x=~<>']_[\-\^x=~<>']|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)|"
                      r"\([\^x=~<>']-[\^x=~<>'`]\)")
_macro("MISCSYMBOL", r"[+%&~\^|\\¦\u00A7¨\u00A9\u00AC\u00AE¯\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7\u0387\u05BE\u05C0"
                     r"\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D"
                     r"\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2023\u2030-\u2038"
                     r"\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF\u2200-\u2BFF\u3012"
                     r"\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65\uFF65]")
_ACRONYM_NEXT = ("[A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er|[H]ere|"
                 "[H]owever|[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\\.|[M]s\\.|[N]ow|[O]nce|[O]ne|[O]ther|[O]ur|"
                 "[S]he|[S]ince|[S]o|[S]ome|[S]uch|[T]hat|[T]he|[T]heir|[T]hen|[T]here|[T]hese|[T]hey|[T]his|[W]e|"
                 "[W]hen|[W]hile|[W]hat|[Y]et|[Y]ou|{SGML}")


# -- what the rules' actions do to the matched text --------------------------------------------------------------
_LEFT_SINGLE, _RIGHT_SINGLE = "\u0091\u2018\u201B\u2039", "\u0092\u2019\u203A"
_LEFT_DOUBLE, _RIGHT_DOUBLE = "\u0093\u201C\u00AB", "\u0094\u201D\u00BB"
_CURRENCY = str.maketrans({"\u00A2": "cents", "\u00A3": "#", "\u0080": "$", "\u00A4": "$", "\u20A0": "$",
                           "\u20AC": "$"})
_FRACTIONS = str.maketrans({"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3", "\u2154": "2/3"})
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "{": "-LCB-", "}": "-RCB-", "[": "-LSB-", "]": "-RSB-"}


def _quotes(text: str, probably_left: bool) -> str:
    """PTB3 (LaTeX-style) quotes: ` `` for opening ones, ' '' for closing ones."""
    text = regex.sub("&apos;|'", "`" if probably_left else "'", text)
    text = regex.sub('"|&quot;', "``" if probably_left else "''", text)
    for chars, quote in ((_LEFT_SINGLE, "`"), (_RIGHT_SINGLE, "'"), (_LEFT_DOUBLE, "``"), (_RIGHT_DOUBLE, "''")):
        text = regex.sub(f"[{chars}]", quote, text)
    return text


def _no_soft_hyphens(text: str) -> str:
    return text.replace("\u00AD", "") or "-"


def _parens(text: str) -> str:
    return text.replace("(", "-LRB-").replace(")", "-RRB-")


def _amp(text: str) -> str:
    return regex.sub("(?i:&amp;)", "&", text)


Action = Callable[[str], "tuple[str | None, int | None]"]  # text -> (token or None to skip, chars kept or None: all)


def _keep(text: str) -> tuple[str, None]:
    return text, None


def _split_after(n: int) -> Action:
    """Split a word: its first part is the token, the last ``n`` characters are read again (can|not, gon|na)."""
    return lambda text: (text[:-n], len(text) - n)


def _period_again(text: str) -> tuple[str, int]:
    """The abbreviation with its period, and the period read again as a token of its own."""
    return text, len(text) - 1


def _acronym_before_sentence(text: str) -> tuple[str, int]:
    """'I.' before 'The ...': the letter, then the period; longer acronyms keep their period and repeat it."""
    return (text[:-1], len(text) - 1) if len(text) == 2 else (text, len(text) - 1)


@dataclass(frozen=True)
class _Rule:
    head: str  # the token's pattern
    tail: str | None  # the trailing context (matched, counted in the length, not consumed)
    action: Action

    def compiled(self):
        main = regex.compile(f"(?:{self.head}){'' if self.tail is None else f'(?:{self.tail})'}", regex.POSIX)
        return main, regex.compile(self.head), None if self.tail is None else regex.compile(self.tail)


def _rule(head: str, tail: str | None = None, action: Action = _keep) -> _Rule:
    head = _ci(head.format(**M))
    return _Rule(head, None if tail is None else _ci(tail.format(**M)), action)


_SKIP: Action = lambda text: (None, None)  # noqa: E731
_RULES = [
    _rule(r"c[+][+]"),
    _rule(r"(?:c|f)#"),
    _rule(r"cannot", action=_split_after(3)),
    _rule(r"'twas", action=_split_after(3)),
    _rule(r"'tis", action=_split_after(2)),
    _rule(r"gonna|gotta|lemme|gimme|wanna", action=_split_after(2)),
    _rule(r"{SGML}", action=lambda t: (t.replace(" ", "\u00A0"), None)),
    _rule(r"{SPMDASH}", action=lambda t: ("--", None)),
    _rule(r"{SPAMP}", action=lambda t: (_amp(t), None)),
    _rule(r"{SPPUNC}"),
    _rule(r"{WORD}", r"{REDAUX}", lambda t: (_no_soft_hyphens(t), None)),
    _rule(r"{SWORD}", r"{SREDAUX}", lambda t: (_no_soft_hyphens(t), None)),
    _rule(r"{WORD}", action=lambda t: (_no_soft_hyphens(t), None)),
    _rule(r"{APOWORD}"),
    _rule(r"{APOWORD2}", r"\p{{L}}"),
    _rule(r"{FULLURL}"),
    _rule(r"{LIKELYURL}"),
    _rule(r"{EMAIL}"),
    _rule(r"{TWITTER}"),
    _rule(r"{REDAUX}", r"[^A-Za-z]", lambda t: (_quotes(t, False), None)),
    _rule(r"{SREDAUX}", r"[^A-Za-z]", lambda t: (_quotes(t, False), None)),
    _rule(r"{DATE}"),
    _rule(r"{NUMBER}", action=lambda t: (_no_soft_hyphens(t), None)),
    _rule(r"{SUBSUPNUM}"),
    # the lexer's "traditional" state, the one pycocoevalcap's options select (its "strict" FRAC rule never runs)
    _rule(r"{FRAC}", action=lambda t: (t.replace(" ", "\u00A0"), None)),
    _rule(r"{FRAC2}", action=lambda t: (t.translate(_FRACTIONS), None)),
    _rule(r"{TBSPEC}", action=lambda t: (_amp(t), None)),
    _rule(r"{THING3}"),
    _rule(r"{DOLSIGN}"),
    _rule(r"{DOLSIGN2}", action=lambda t: (t.translate(_CURRENCY), None)),
    _rule(r"{ACRONYM}", r"{SPACENLS}(?:" + _ACRONYM_NEXT + r"){SPACENL}", _acronym_before_sentence),
    _rule(r"{ABBREV3}", r"{SPACENL}?\p{{Nd}}"),
    _rule(r"(?:pt[eyEY]|co)\.", r"{SPACE}(?:ltd|lim)"),
    _rule(r"{ABBREV1}", r"{SENTEND}", _period_again),
    _rule(r"{ABBREV1}", r"(?s:..)"),
    _rule(r"{ABBREV1}", action=_period_again),
    _rule(r"{ABBREV2}"),
    _rule(r"{ABBREV4}", r"{SPACE}"),
    _rule(r"{ACRO}", r"{SPACENL}"),
    _rule(r"{TBSPEC2}", r"{SPACENL}"),
    _rule(r"{FILENAME}", r"{SPACENL}|[.?!,]"),
    _rule(r"{WORD}\.", r"{INSENTP}", lambda t: (_no_soft_hyphens(t), None)),
    _rule(r"{PHONE}", action=lambda t: (_parens(t.replace(" ", "\u00A0")), None)),
    _rule(r"{DBLQUOT}", r"[A-Za-z0-9$]", lambda t: (_quotes(t, True), None)),
    _rule(r"{DBLQUOT}", action=lambda t: (_quotes(t, False), None)),
    _rule(r"\x7f", action=_SKIP),
    _rule(r"<|&lt;", action=lambda t: ("<", None)),
    _rule(r">|&gt;", action=lambda t: (">", None)),
    _rule(r"{SMILEY}", r"[^A-Za-z0-9]", lambda t: (_parens(t), None)),
    _rule(r"{ASIANSMILEY}", action=lambda t: (_parens(t), None)),
    _rule(r"[{{}}\[\]()]", action=lambda t: (_BRACKETS[t], None)),
    _rule(r"-+", action=lambda t: ("--" if 3 <= len(t) <= 4 else t, None)),
    _rule(r"{LDOTS}", action=lambda t: ("...", None)),
    _rule(r"@+|#+|_+"),
    _rule(r"\*+|(?:\\\*){{1,3}}"),
    _rule(r"{INSENTP}"),
    _rule(r"[?!]+"),
    _rule(r"[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]"),
    _rule(r"="),
    _rule(r"/"),
    _rule(r"{HTHING}\.", r"{INSENTP}", lambda t: (_no_soft_hyphens(t), None)),
    _rule(r"{HTHING}", action=lambda t: (_no_soft_hyphens(t), None)),
    _rule(r"{THING}\.", r"{INSENTP}"),
    _rule(r"{THING}"),
    _rule(r"{THINGA}\.", r"{INSENTP}", lambda t: (_amp(t), None)),
    _rule(r"{THINGA}", action=lambda t: (_amp(t), None)),
    _rule(r"'", r"[A-Za-z][^ \t\n\r\u00A0]", lambda t: (_quotes(t, True), None)),
    _rule(r"{REDAUX}", action=lambda t: (_quotes(t, False), None)),
    _rule(r"{SREDAUX}", action=lambda t: (_quotes(t, False), None)),
    _rule(r"{QUOTES}", action=lambda t: (_quotes(t, False), None)),
    _rule(r"<<|>>"),
    _rule(r"{MISCSYMBOL}"),
    _rule(r"\x00|{SPACES}|[\u200B\u200E-\u200F\uFEFF]", action=_SKIP),
    _rule(r"{NEWLINE}", action=lambda t: (NEWLINE_TOKEN, None)),
    _rule(r"&nbsp;", action=_SKIP),
    _rule(r".", action=_SKIP),  # a character no rule knows: deleted (the lexer's default, "firstDelete")
]
_COMPILED = [(rule, *rule.compiled()) for rule in _RULES]
_BY_FIRST: dict[str, list] = {}


def _candidates(char: str) -> list:
    """The rules that can match text starting with ``char`` (a partial match of it alone), found once per char."""
    if char not in _BY_FIRST:
        _BY_FIRST[char] = [c for c in _COMPILED if c[1].match(char, partial=True)]
    return _BY_FIRST[char]


def _longest_head(head, tail, text: str, start: int, end: int) -> int:
    """Where the token ends in a trailing-context match text[start:end]: the longest head the tail can follow."""
    for cut in range(end - 1, start, -1):
        if head.fullmatch(text, start, cut) and tail.fullmatch(text, cut, end):
            return cut
    return end


# A shortcut for most of a caption, giving what the rules give: a run of ASCII letters before a space or a line end
# (or the end) is that word, unless a rule splits it (cannot, gonna...); spaces are skipped; a period or comma
# before a space or a line end is itself. No rule matches longer there (those that span a space start with a digit,
# "<" or "."; a trailing context adds the space but keeps the same token).
_PLAIN = regex.compile(r"(?:([A-Za-z]+)|([.,])|[ ]+)(?=[ \n]|\Z)")
_SPLIT_WORDS = regex.compile(r"(?i)cannot|gonna|gotta|lemme|gimme|wanna")


def lex(text: str, end: int | None = None) -> list[str]:
    """The tokens of ``text`` as the Java lexer returns them (before lower-casing), newlines as ``NEWLINE_TOKEN``;
    with ``end``, those that start before it (the text after it is only looked at)."""
    tokens, at, stop = [], 0, len(text) if end is None else end
    while at < stop:
        plain = _PLAIN.match(text, at)
        if plain and not (plain.group(1) and _SPLIT_WORDS.fullmatch(plain.group(1))):
            if plain.group(1) or plain.group(2):
                tokens.append(plain.group(0))
            at = plain.end()
            continue
        best, best_end = None, at
        for rule, main, head, tail in _candidates(text[at]):
            match = main.match(text, at)
            if match and match.end() > best_end:
                best, best_end, best_parts = rule, match.end(), (head, tail)
        if best is None:  # cannot happen: "." matches any character but a line feed, which NEWLINE matches
            at += 1
            continue
        end = best_end if best.tail is None else _longest_head(*best_parts, text, at, best_end)
        token, kept = best.action(text[at:end])
        at += end - at if kept is None else kept
        if token is not None:
            tokens.append(token)
    return tokens


def lex_lines(lines: list[str]) -> list[list[str]]:
    """Each line's tokens, lower-cased as ``PTBTokenizer -preserveLines -lowerCase`` prints them, the lines read
    as one text (joined by line feeds, as pycocoevalcap writes them).

    No token spans a line feed, but a rule may look past one (over blank lines, into the next line with text), so
    each line is lexed with that much of what follows it (lexing the whole text at once would be slow).
    """
    out = []
    for i, line in enumerate(lines):
        after = ""
        for following in lines[i + 1:]:
            after += "\n" + following
            if following.strip():
                break
        tokens = lex(line + after, len(line))
        out.append([t.lower() for t in tokens if t != NEWLINE_TOKEN])
    return out
