import { Link } from "react-router";
import { Empty, PageHeader } from "../components/ui";

/** NotFoundPage is shown for unknown console routes. */
export function NotFoundPage() {
  return (
    <>
      <PageHeader title="Page not found" />
      <Empty>
        This page does not exist. <Link to="/">Back to the dashboard</Link>
      </Empty>
    </>
  );
}
