"""Every text a user sees, in English and Japanese, and the command-name translator.

Replies follow the locale of the user who asked (`interaction.locale`); replies to
plain image posts use `discord.reply_locale`. Command names stay English with
Japanese localisations, provided to Discord through `CommandTranslator` at sync.
"""

from __future__ import annotations

import discord
from discord import app_commands

from wakeru.labels import LabelError
from wakeru.protocol import ErrorCode

# key → (English, Japanese); str.format fields in braces.
TEXTS: dict[str, tuple[str, str]] = {
    # result embeds
    "source.adhoc": ("labels given with the command ({count})", "コマンドで指定したラベル（{count}件）"),
    "source.channel": ("label set of {channel} ({count}, v{version})", "{channel} のラベルセット（{count}件・v{version}）"),
    "source.parent": ("label set of {channel}, the parent channel ({count}, v{version})",
                      "親チャンネル {channel} のラベルセット（{count}件・v{version}）"),
    "source.server": ("the server's label set ({count}, v{version})", "サーバーのラベルセット（{count}件・v{version}）"),
    "source.default": ("the default label set ({count})", "既定のラベルセット（{count}件）"),
    "low_confidence": ("Not sure: none of the labels fits well. Try adding a better label.",
                       "自信がありません: どのラベルもあまり当てはまらないようです。ラベルを見直してください。"),
    "image_failed": ("Could not classify this image", "この画像は分類できませんでした"),
    "more_images": ("Only the first {limit} images were classified.", "最初の{limit}枚だけを分類しました。"),
    # errors, by code (worker codes and the bot's own)
    "error.empty_image": ("The file is empty.", "ファイルが空です。"),
    "error.too_large": ("The image file is too large.", "画像ファイルが大きすぎます。"),
    "error.too_many_pixels": ("The image has too many pixels.", "画像の画素数が多すぎます。"),
    "error.bad_dimensions": ("The image's size is unusable.", "画像のサイズが不正です。"),
    "error.unsupported_format": ("This file type is not supported: use JPEG, PNG, GIF, WebP or BMP.",
                                 "このファイル形式には対応していません。JPEG・PNG・GIF・WebP・BMP を使ってください。"),
    "error.corrupt_image": ("The image is damaged or incomplete and could not be read.",
                            "画像が壊れているか途中で切れているため、読み込めませんでした。"),
    "error.unreadable": ("The image could not be downloaded.", "画像をダウンロードできませんでした。"),
    "error.bad_labels": ("The label set cannot be used.", "ラベルセットを使えません。"),
    "error.bad_request": ("The request was malformed.", "リクエストが不正です。"),
    "error.queue_full": ("Busy right now: try again in a moment.", "混み合っています。少し待ってからもう一度お試しください。"),
    "error.deadline_exceeded": ("This took too long: try again in a moment.",
                                "時間内に処理できませんでした。少し待ってからもう一度お試しください。"),
    "error.unavailable": ("The image model is temporarily unavailable: try again later.",
                          "画像モデルは一時的に利用できません。しばらくしてからお試しください。"),
    "error.internal_error": ("Something went wrong while classifying this image.", "この画像の分類中にエラーが起きました。"),
    "error.worker_crashed": ("The image model crashed twice while working on this image, so it was not classified.",
                             "この画像の処理中に画像モデルが2回停止したため、分類しませんでした。"),
    # flood control and restarts
    "rate.user": ("You are sending images faster than {rate} a minute: try again in {seconds} s.",
                  "画像の送信が多すぎます（1分あたり{rate}枚まで）。{seconds}秒後にもう一度お試しください。"),
    "rate.channel": ("This channel is sending images faster than {rate} a minute: try again in {seconds} s.",
                     "このチャンネルの画像が多すぎます（1分あたり{rate}枚まで）。{seconds}秒後にもう一度お試しください。"),
    "expired.note": ("Answer for {user} (the command's reply window had closed):",
                     "{user} さんへの回答です（コマンドの返信期限が切れたため、ここに投稿します）:"),
    "shutting_down": ("Wakeru is restarting: try again in a minute.", "Wakeru は再起動中です。1分ほどしてからもう一度お試しください。"),
    # /classify and the context menu
    "classify.need_image": ("Attach an image (`image`) or pick one of the samples (`sample`).",
                            "画像を添付する（`image`）か、サンプル（`sample`）を選んでください。"),
    "classify.both": ("Give either `image` or `sample`, not both.", "`image` と `sample` はどちらか一方だけ指定してください。"),
    "classify.not_image": ("`{name}` is not an image (JPEG, PNG, GIF, WebP or BMP).",
                           "`{name}` は画像ではありません（JPEG・PNG・GIF・WebP・BMP）。"),
    "classify.unknown_sample": ("There is no sample called `{name}`; pick one from the list.",
                                "`{name}` というサンプルはありません。一覧から選んでください。"),
    "classify.no_images": ("That message has no images to classify.", "そのメッセージには分類できる画像がありません。"),
    "guild_only": ("This command works only in a server.", "このコマンドはサーバー内でのみ使えます。"),
    # label rules (wakeru.labels.LabelError codes)
    "labels.empty": ("No labels given: separate labels with commas, 、 or new lines.",
                     "ラベルがありません。カンマ・読点（、）・改行で区切って指定してください。"),
    "labels.too_few": ("Only {count} distinct label(s) given; give at least {minimum}.",
                       "異なるラベルが{count}個しかありません。{minimum}個以上指定してください。"),
    "labels.too_many": ("{count} labels given; the limit is {limit}: remove {excess}.",
                        "ラベルが{count}個あります。上限は{limit}個なので、{excess}個減らしてください。"),
    "labels.too_long": ("The label “{label}” is {length} characters long; the limit is {limit}: shorten it.",
                        "ラベル「{label}」は{length}文字あります。上限は{limit}文字なので短くしてください。"),
    "labels.control_chars": ("The label “{label}” contains control characters; remove them.",
                             "ラベル「{label}」に制御文字が含まれています。取り除いてください。"),
    "labels.not_text": ("Labels must be text.", "ラベルは文字列で指定してください。"),
    "labels.invalid": ("The labels are invalid: {detail}", "ラベルが不正です: {detail}"),
    "labels.not_in_set": ("Not in the label set: {labels}", "ラベルセットにありません: {labels}"),
    # /labels replies
    "show.title": ("Labels for {where}", "{where} のラベル"),
    "where.channel": ("{channel}", "{channel}"),
    "where.server": ("this server", "このサーバー"),
    "show.inherited": ("This scope has no set of its own; it uses {source}.",
                       "独自のセットはありません。{source}を使っています。"),
    "show.auto": ("Automatic classification of posted images here: {state}.", "ここに投稿された画像の自動分類: {state}。"),
    "state.on": ("on", "オン"),
    "state.off": ("off", "オフ"),
    # public announcements of a saved change: who, where, the version written, the resulting labels
    "changed.set": ("{user} set the labels of {where}: now v{version} ({count} labels):",
                    "{user} が {where} のラベルセットを v{version} にしました（{count}件）:"),
    "changed.add": ("{user} added {changed} to {where}: now v{version} ({count} labels):",
                    "{user} が {where} に {changed} を追加しました。v{version}（{count}件）:"),
    "changed.remove": ("{user} removed {changed} from {where}: now v{version} ({count} labels):",
                       "{user} が {where} から {changed} を削除しました。v{version}（{count}件）:"),
    "changed.preset": ("{user} applied the preset `{preset}` to {where}: now v{version} ({count} labels):",
                       "{user} が {where} にプリセット `{preset}` を適用しました。v{version}（{count}件）:"),
    "changed.reset": ("{user} removed the own label set of {where} (v{version}); it now uses {source}:",
                      "{user} が {where} の独自ラベルセットを削除しました（v{version}）。今後は{source}を使います:"),
    "changed.undo": ("{user} undid v{reverted} of {where}: now v{version} ({count} labels):",
                     "{user} が {where} の v{reverted} を取り消しました。現在 v{version}（{count}件）:"),
    "changed.undo_reset": ("{user} undid v{reverted} of {where} (v{version}): it has no set of its own now and "
                           "uses {source}:",
                           "{user} が {where} の v{reverted} を取り消しました（v{version}）。独自のセットはなくなり、"
                           "{source}を使います:"),
    "announce.failed": ("Wakeru may not post in this channel, so only you see this; the change is saved.",
                        "このチャンネルに投稿できないため、あなたにだけ表示しています。変更は保存されました。"),
    "more": ("and {count} more", "ほか{count}件"),
    "add.too_many": ("That would make {count} labels; the limit is {limit}. Remove some first.",
                     "合計{count}個になり、上限の{limit}個を超えます。先にいくつか削除してください。"),
    "remove.too_few": ("That would leave {count} label(s); a set needs at least 2. To drop the set, use /labels reset.",
                       "残りが{count}個になります。セットには2個以上必要です。セットごと消すには /labels reset を使ってください。"),
    "add.nothing_new": ("All of these labels are already in the set.", "指定したラベルはすべてセットに含まれています。"),
    "reset.nothing": ("{where} has no label set of its own; nothing to reset.",
                      "{where} には独自のラベルセットがないため、リセットするものはありません。"),
    "undo.nothing": ("Nothing to undo for {where}.", "{where} には取り消せる変更がありません。"),
    "preset.unknown": ("There is no preset called `{name}`. Presets: {names}.",
                       "`{name}` というプリセットはありません。プリセット: {names}。"),
    "history.title": ("Changes to the labels of {where}", "{where} のラベルの変更履歴"),
    "history.empty": ("No changes recorded for {where}.", "{where} の変更記録はありません。"),
    "history.line": ("v{version} · {action} by {user} · {when}", "v{version}・{action}・{user}・{when}"),
    "history.reverted": ("(undone)", "（取り消し済み）"),
    "action.set": ("set", "設定"), "action.add": ("add", "追加"), "action.remove": ("remove", "削除"),
    "action.reset": ("reset", "リセット"), "action.preset": ("preset", "プリセット"), "action.undo": ("undo", "取り消し"),
    "auto.changed": ("{user} turned automatic classification in {channel} {state}.",
                     "{user} が {channel} の自動分類を{state}にしました。"),
    # permission refusals
    "denied.channel": ("You need the **Manage Channels** permission (or a moderator role) to manage this channel's labels.",
                       "このチャンネルのラベルを管理するには **チャンネルの管理** 権限（またはモデレーターロール）が必要です。"),
    "denied.server": ("You need the **Manage Server** permission (or a moderator role) to manage the server's labels.",
                      "サーバーのラベルを管理するには **サーバー管理** 権限（またはモデレーターロール）が必要です。"),
    # failures of the bot itself
    "storage_error": ("The label database could not be used: {reason}. Nothing was changed; the bot's log says more.",
                      "ラベルのデータベースを使えませんでした: {reason}。何も変更されていません（詳細はボットのログにあります）。"),
    # StorageError.reason: what members may be told, never a path, host or database name
    "storage.read_only": ("it is read-only", "読み取り専用（read-only）になっています"),
    "storage.full": ("its disk is full", "ディスクの容量がいっぱいです"),
    "storage.busy": ("it is busy; try again in a moment", "混み合っています。少ししてからもう一度お試しください"),
    "storage.unreachable": ("it cannot be reached right now", "現在接続できません"),
    "storage.broken": ("it reported an error", "エラーが起きました"),
    "conflict": ("Someone else changed these labels at the same moment; nothing was changed. Try again.",
                 "同時に別の人がラベルを変更したため、何も変更していません。もう一度お試しください。"),
    "internal": ("Something went wrong on our side ({ref}). Try again.", "内部エラーが起きました（{ref}）。もう一度お試しください。"),
}


def language(locale: discord.Locale | str | None) -> int:
    """0 = English, 1 = Japanese (the index into TEXTS)."""
    value = locale.value if isinstance(locale, discord.Locale) else (locale or "")
    return 1 if str(value).lower().startswith("ja") else 0


def text(locale: discord.Locale | str | None, key: str, **fields) -> str:
    return TEXTS[key][language(locale)].format(**fields)


def label_error(locale, error: LabelError) -> str:
    key = f"labels.{error.code}"
    if key not in TEXTS:
        return text(locale, "labels.invalid", detail=str(error))
    fields = dict(error.params)
    if "label" in fields:  # long labels are cut so the message stays readable
        label = str(fields["label"])
        fields["label"] = label if len(label) <= 30 else label[:30] + "…"
    return text(locale, key, **fields)


def rate_limit_text(locale, refusal) -> str:
    """「画像の送信が多すぎます（1分あたり20枚まで）。N秒後に…」 for a bot.ratelimit.Refusal."""
    return text(locale, f"rate.{refusal.scope}", rate=f"{refusal.per_minute:g}",
                seconds=max(1, round(refusal.retry_after)))


def error_text(locale, code: ErrorCode | str) -> str:
    code = code.value if isinstance(code, ErrorCode) else code
    key = f"error.{code}"
    return text(locale, key if key in TEXTS else "error.internal_error")


# ---- command names and descriptions ------------------------------------------------------

# English source text → Japanese. Names must satisfy Discord's command-name rules
# (no spaces, lower case where the script has case); descriptions ≤ 100 characters.
JAPANESE_COMMANDS: dict[str, str] = {
    "classify": "分類",
    "Classify an image against this channel's labels (or labels you give)":
        "画像をこのチャンネルのラベル（または指定したラベル）で分類します",
    "image": "画像",
    "The image to classify": "分類する画像",
    "labels": "ラベル",
    "Labels to use instead of the channel's, separated by commas or 、":
        "チャンネルのラベルの代わりに使うラベル（カンマか読点で区切る）",
    "sample": "サンプル",
    "Classify one of the bot's sample images instead": "添付の代わりにボットのサンプル画像を分類します",
    "Classify image": "画像を分類",
    "Show and manage the label sets used to classify images": "画像の分類に使うラベルセットの表示と管理",
    "show": "表示",
    "Show the labels used here": "ここで使われているラベルを表示します",
    "set": "設定",
    "Replace the label set": "ラベルセットを置き換えます",
    "New labels, separated by commas, 、 or new lines": "新しいラベル（カンマ・読点・改行で区切る）",
    "add": "追加",
    "Add labels to the set": "ラベルセットにラベルを追加します",
    "Labels to add": "追加するラベル",
    "remove": "削除",
    "Remove labels from the set": "ラベルセットからラベルを削除します",
    "Labels to remove": "削除するラベル",
    "reset": "リセット",
    "Drop this scope's own set and fall back to the inherited one": "独自のセットを削除し、上位のセットに戻します",
    "preset": "プリセット",
    "Replace the label set with a preset": "ラベルセットをプリセットで置き換えます",
    "name": "名前",
    "The preset to use": "使うプリセット",
    "history": "履歴",
    "Show the latest changes to the label set": "ラベルセットの最近の変更を表示します",
    "undo": "元に戻す",
    "Undo the latest change to the label set": "ラベルセットの最後の変更を取り消します",
    "auto": "自動",
    "Turn automatic classification of posted images in this channel on or off":
        "このチャンネルに投稿された画像の自動分類をオン・オフします",
    "state": "状態",
    "on": "オン",
    "off": "オフ",
    "On or off": "オンかオフ",
    "scope": "範囲",
    "Which label set: this channel's or the server's": "対象のラベルセット: このチャンネルかサーバー全体か",
    "channel": "チャンネル",
    "server": "サーバー",
}


class CommandTranslator(app_commands.Translator):
    """Japanese names and descriptions for the English commands."""

    async def translate(self, string: app_commands.locale_str, locale: discord.Locale,
                        context: app_commands.TranslationContextTypes) -> str | None:
        if locale is discord.Locale.japanese:
            return JAPANESE_COMMANDS.get(string.message)
        return None
