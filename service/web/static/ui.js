// Live parts of the pages, no framework: an element with data-refresh="URL" is
// re-fetched every data-interval ms and replaced by the fragment the server sends.
// A fragment without data-refresh stops polling; one with data-reload="1" reloads the page.
"use strict";

function poll(el) {
  const wait = Number(el.dataset.interval) || 2000;
  setTimeout(async () => {
    try {
      const resp = await fetch(el.dataset.refresh, { headers: { Accept: "text/html" } });
      if (resp.ok) {
        const tpl = document.createElement("template");
        tpl.innerHTML = (await resp.text()).trim();
        const fresh = tpl.content.firstElementChild;
        if (fresh) {
          el.replaceWith(fresh);
          if (fresh.dataset.reload === "1") {
            location.reload();
          } else if (fresh.dataset.refresh) {
            poll(fresh);
          }
          return;
        }
      }
    } catch (err) {
      // The server may be restarting: keep polling.
    }
    poll(el);
  }, wait);
}

document.querySelectorAll("[data-refresh]").forEach(poll);
