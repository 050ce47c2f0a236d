"""Headless Chromium for the browser tests, and the Temporal UI as a person uses it: a
launch's page once rendered, its current details, and its Send a Signal dialog.

The tests never download a browser: they drive the system's Chromium (PHASEGATE_CHROMIUM, by
default /usr/bin/chromium) through Playwright.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, FrameLocator, Page, async_playwright, expect

CHROMIUM = Path(os.environ.get("PHASEGATE_CHROMIUM", "/usr/bin/chromium"))
# Root in a container needs --no-sandbox; the rest keeps an offline machine from waiting on
# update, sync and first-run requests that can never succeed.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The UI's first render of a workflow page waits on several API calls and runs a lot of script:
# on a busy two-core machine it has taken 15 s. Each later step gets UI_TIMEOUT_MS.
FIRST_RENDER_TIMEOUT_MS = 60_000
UI_TIMEOUT_MS = 30_000


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """The system's Chromium, headless; the test fails, naming what to install, without it."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: install it (`apt-get install chromium`) or set "
            "PHASEGATE_CHROMIUM to its path; the browser tests never download a browser"
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def new_page(browser: Browser, screenshot: Path) -> AsyncIterator[Page]:
    """A fresh page; a screenshot of it is saved at `screenshot` if the block fails."""
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield page
    except BaseException:
        await page.screenshot(path=screenshot, full_page=True)
        raise
    finally:
        await page.close()


@asynccontextmanager
async def workflow_page(browser: Browser, url: str, screenshot: Path) -> AsyncIterator[Page]:
    """The launch's page once the UI has rendered it; a screenshot is saved if the block fails."""
    async with new_page(browser, screenshot) as page:
        await page.goto(url)
        await expect(page.get_by_role("button", name="More Actions")).to_be_enabled(
            timeout=FIRST_RENDER_TIMEOUT_MS
        )
        yield page


async def current_details(page: Page) -> FrameLocator:
    """The launch's current details, shown on the User Metadata tab."""
    await page.get_by_role("tab", name="User Metadata").click()
    # The UI renders current details as Markdown in a sandboxed frame of their own.
    return page.frame_locator("iframe#user-metadata-current-details")


async def send_signal(page: Page, name: str, payload: str) -> None:
    """Send the signal `name` with `payload` (JSON as the editor formats it: two-space indents)
    from the workflow page's Send a Signal dialog, and wait until the dialog closes."""
    await page.get_by_role("button", name="More Actions").click()
    await page.get_by_role("menuitem", name="Send a Signal").click()
    dialog = page.get_by_role("dialog", name="Send a Signal")
    await dialog.get_by_role("button", name="Select a signal").click()
    # An option's name is the signal name followed by its description.
    await dialog.get_by_role("option", name=re.compile(rf"^{re.escape(name)}\b")).click()
    editor = dialog.get_by_role("textbox", name="Data")
    await editor.click()
    # CodeMirror closes braces and quotes as they are typed; inserting the text bypasses that.
    # The payload already being in the editor's format matters: it re-indents JSON on blur, and
    # the dialog growing under the pointer on the way to Submit would swallow the click.
    await page.keyboard.press("ControlOrMeta+A")
    await page.keyboard.insert_text(payload)
    await editor.blur()
    await expect(editor).to_have_text(payload, use_inner_text=True, timeout=UI_TIMEOUT_MS)
    await dialog.get_by_role("button", name="Submit").click()
    await expect(dialog).to_be_hidden(timeout=UI_TIMEOUT_MS)
