"""The console in a real browser (Playwright, Debian's chromium): sign in, the nav of the role, the
language switch, sign out; screenshots under tests/output/<test>/."""

from browser import fits_phone, shot
from web_helpers import PASSWORD


def test_sign_in_nav_language_and_sign_out(console_sqlite, page):
    console = console_sqlite
    page.goto(console.url + "/")
    assert page.url.startswith(console.url + "/login")  # no session: the login page
    assert page.locator("h1").inner_text() == "Đăng nhập"  # Vietnamese first
    shot(page, "login")
    page.fill("#name", "viewer")
    page.fill("#password", "not the password")
    page.click("button[type=submit]")
    assert "Sai tên đăng nhập hoặc mật khẩu" in page.locator(".error").inner_text()
    page.fill("#name", "viewer")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(console.url + "/")
    assert "Xin chào, viewer" in page.locator("h1").inner_text()
    assert "người xem" in page.content()  # the role, translated
    # the nav shows what the role may see; the layout fits a 375 px screen (no sideways scrolling)
    assert page.locator("nav a").all_inner_texts()[0] == "Trang chủ"
    assert fits_phone(page)
    shot(page, "home-vi")
    page.click("text=English")
    page.wait_for_url(console.url + "/")
    assert "Welcome, viewer" in page.locator("h1").inner_text()
    assert page.locator("button", has_text="Sign out").is_visible()
    shot(page, "home-en")
    page.click("text=Tiếng Việt")
    page.wait_for_url(console.url + "/")
    page.click("button:has-text('Đăng xuất')")
    page.wait_for_url(console.url + "/login")
    page.goto(console.url + "/")
    assert page.url.startswith(console.url + "/login")  # the session is gone
    shot(page, "signed-out")
    assert (page.output_dir / "home-en.png").stat().st_size > 1000
